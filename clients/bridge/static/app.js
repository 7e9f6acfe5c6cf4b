// duft-bridge page: list tasks, run one with its parameters, follow its log live.
// Plain JavaScript, no build step; every text from the server goes in with textContent.
"use strict";

const FINAL = new Set(["succeeded", "failed", "cancelled", "lost"]);
const $ = (id) => document.getElementById(id);

const ui = {
  tasks: [],
  task: null,         // the selected task (from /api/tasks/{id})
  selecting: 0,       // counts task selections, so a slow answer cannot win over a newer one
  runId: null,        // the run shown in the run panel
  source: null,       // its EventSource
  lastSeq: 0,         // the last event number shown, so nothing is shown twice
  finished: false,    // its final state has been shown
  progressSeen: false,
};

// -- HTTP -------------------------------------------------------------------------------

async function api(path, options = {}) {
  const init = { headers: { Accept: "application/json" }, ...options };
  if (init.body !== undefined) {
    init.method = init.method || "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(init.body);
  }
  const response = await fetch(path, init);
  let data = null;
  try { data = await response.json(); } catch (_) { /* empty or not JSON */ }
  if (!response.ok) {
    const message = data && data.error ? data.error.message : `${response.status} ${response.statusText}`;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return data;
}

// -- location hash: #task=ID&run=N survives a reload ------------------------------------

function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const run = parseInt(params.get("run") || "", 10);
  return { task: params.get("task"), run: Number.isFinite(run) ? run : null };
}

function writeHash() {
  const params = new URLSearchParams();
  if (ui.task) params.set("task", ui.task.id);
  if (ui.runId) params.set("run", String(ui.runId));
  history.replaceState(null, "", `#${params}`);
}

// -- daemon status ----------------------------------------------------------------------

async function checkDaemon() {
  const pill = $("daemon");
  try {
    const { daemon } = await api("/api/health");
    pill.textContent = `duftd ${daemon.version}: ${daemon.active} running, ${daemon.queued} queued`;
    pill.className = "pill up";
    return true;
  } catch (error) {
    pill.textContent = error.status === 503 ? "duftd: not reachable" : `duftd: ${error.message}`;
    pill.title = error.message;
    pill.className = "pill down";
    return false;
  }
}

// -- tasks ------------------------------------------------------------------------------

async function loadTasks() {
  const all = $("show-hidden").checked ? "?all=1" : "";
  try {
    ui.tasks = (await api(`/api/tasks${all}`)).tasks;
  } catch (error) {
    ui.tasks = [];
    $("task-list").replaceChildren(item(null, `Tasks unavailable: ${error.message}`));
    return;
  }
  renderTaskList();
}

function item(button, text) {
  const li = document.createElement("li");
  if (button) li.append(button); else { li.className = "muted small"; li.textContent = text; }
  return li;
}

function renderTaskList() {
  const rows = ui.tasks.map((task) => {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.task = task.id;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = task.name;
    name.title = task.description || task.id;
    button.append(name);
    if (task.hidden) {
      const tag = document.createElement("span");
      tag.className = "hidden-tag";
      tag.textContent = "hidden";
      button.append(tag);
    }
    if (ui.task && ui.task.id === task.id) button.setAttribute("aria-current", "true");
    button.addEventListener("click", () => selectTask(task.id));
    return item(button);
  });
  $("task-list").replaceChildren(...(rows.length ? rows : [item(null, "No tasks.")]));
}

async function selectTask(taskId) {
  if (ui.task && ui.task.id === taskId) return; // keep what the user typed in its form
  const token = ++ui.selecting;
  let task;
  try {
    task = (await api(`/api/tasks/${encodeURIComponent(taskId)}`)).task;
  } catch (error) {
    $("submit-note").textContent = error.message;
    return;
  }
  if (token !== ui.selecting) return; // another task was chosen meanwhile
  ui.task = task;
  renderTaskList();
  renderForm(task);
  writeHash();
  if ($("history-this-task").checked) loadHistory();
}

function renderForm(task) {
  $("task-card").hidden = false;
  $("empty-card").hidden = true;
  $("task-title").textContent = task.name;
  $("task-description").textContent = task.description || "";
  $("task-id").textContent = task.id;
  const note = $("submit-note");
  note.textContent = task.runnable ? "" : `Cannot run: ${(task.problems || []).join("; ")}`;
  note.className = task.runnable ? "note" : "note error";
  $("run-button").disabled = !task.runnable;
  const fields = Object.entries(task.parameters || {}).map(([name, spec]) => paramField(name, spec));
  $("params").replaceChildren(...fields);
}

function paramField(name, spec) {
  const wrap = document.createElement("div");
  wrap.className = "param";
  const id = `param-${name}`;
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = spec.title || name;
  let input;
  const value = spec.default;
  if (typeof value === "boolean") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = value;
  } else if (typeof value === "number") {
    input = document.createElement("input");
    input.type = "number";
    input.step = "any";
    input.value = String(value);
  } else if (value === null || value === undefined || typeof value === "string") {
    input = document.createElement("input");
    input.type = "text";
    input.value = value == null ? "" : value;
    if (!spec.has_default) input.placeholder = "(not set)";
  } else {
    input = document.createElement("textarea");
    input.value = JSON.stringify(value);
    input.dataset.json = "1";
  }
  input.id = id;
  input.name = name;
  input.dataset.kind = typeof value;
  input.disabled = !spec.allow_override;
  const help = document.createElement("div");
  help.className = "help";
  const fixed = spec.allow_override ? "" : " (fixed: cannot be overridden)";
  help.textContent = `${spec.description || ""}${fixed}`;
  wrap.append(label, input, help);
  return wrap;
}

function formParameters() {
  const params = {};
  for (const input of $("params").querySelectorAll("input, textarea")) {
    if (input.disabled) continue;
    if (input.type === "checkbox") params[input.name] = input.checked;
    else if (input.dataset.kind === "number") {
      if (input.value.trim() === "") continue;
      params[input.name] = Number(input.value);
    } else if (input.dataset.json) params[input.name] = JSON.parse(input.value);
    else if (input.value !== "" || input.dataset.kind === "string") params[input.name] = input.value;
  }
  return params;
}

async function submitRun(event) {
  event.preventDefault();
  const note = $("submit-note");
  note.className = "note";
  let params;
  try {
    params = formParameters();
  } catch (error) {
    note.textContent = `A parameter is not valid JSON: ${error.message}`;
    note.className = "note error";
    return;
  }
  $("run-button").disabled = true;
  try {
    const result = await api(`/api/tasks/${encodeURIComponent(ui.task.id)}/runs`, { body: params });
    const parts = [result.joined ? `Already active: following run ${result.run.id}.` : `Started run ${result.run.id}.`];
    const ignored = Object.entries(result.ignored || {});
    if (ignored.length) parts.push(`Ignored: ${ignored.map(([k, why]) => `${k} (${why})`).join(", ")}.`);
    note.textContent = parts.join(" ");
    openRun(result.run.id);
    loadHistory();
  } catch (error) {
    note.textContent = error.message;
    note.className = "note error";
  } finally {
    $("run-button").disabled = !ui.task.runnable;
  }
}

// -- one run: its log, progress and state -------------------------------------------------

function closeStream() {
  if (ui.source) ui.source.close();
  ui.source = null;
}

async function openRun(runId) {
  closeStream();
  ui.runId = runId;
  ui.lastSeq = 0;
  ui.finished = false;
  ui.progressSeen = false;
  writeHash();
  markCurrentRun();
  $("run-card").hidden = false;
  $("empty-card").hidden = true;
  $("log").replaceChildren();
  $("run-params").textContent = "";
  $("run-outcome").hidden = true;
  setProgress(0, 1, "");
  let run;
  try {
    run = (await api(`/api/runs/${runId}`)).run;
  } catch (error) {
    $("run-title").textContent = `Run ${runId}`;
    $("run-params").textContent = error.message;
    setState(error.status === 404 ? "not found" : "unavailable", error.message);
    $("cancel-button").hidden = true;
    return;
  }
  if (ui.runId !== runId) return;
  $("run-title").textContent = `Run ${run.id} · ${run.task_id}`;
  $("run-params").textContent = Object.entries(run.params || {})
    .map(([name, value]) => `${name}=${JSON.stringify(value)}`).join("  ·  ");
  setState(run.state);
  connect(runId);
}

// Follow the run's events after the last one shown. The browser reconnects a dropped
// stream by itself (sending Last-Event-ID); a stream it gave up on (the bridge answered
// an error, e.g. 503 while duftd was away) is reopened here until the run has ended.
function connect(runId) {
  if (ui.runId !== runId) return;
  const source = new EventSource(`/api/runs/${runId}/events?after=${ui.lastSeq}`);
  ui.source = source;
  source.onopen = () => { $("run-stream").textContent = "live"; };
  source.onmessage = (message) => {
    if (ui.source !== source) return;
    const event = JSON.parse(message.data);
    if (event.seq <= ui.lastSeq) return;
    ui.lastSeq = event.seq;
    showEvent(event);
  };
  source.onerror = () => {
    if (ui.source !== source) return;
    if (source.readyState !== EventSource.CLOSED) {
      $("run-stream").textContent = "reconnecting…";
      return;
    }
    ui.source = null;
    $("run-stream").textContent = "waiting for duftd…";
    setTimeout(() => { if (ui.runId === runId && !ui.source && !ui.finished) connect(runId); }, 2000);
  };
}

function showEvent(event) {
  const data = event.data || {};
  switch (event.kind) {
    case "log":
      logLine(event, data.level || "info", data.message);
      break;
    case "stdout":
    case "stderr":
      logLine(event, event.kind, data.text);
      break;
    case "progress":
      ui.progressSeen = true;
      setProgress(data.done, data.total, data.message);
      break;
    case "cell":
      if (!ui.progressSeen && data.phase === "finished") setProgress(data.index + 1, data.count, "cells");
      logLine(event, "cell", `cell ${data.index + 1} of ${data.count} ${data.phase}`);
      break;
    case "notice":
      logLine(event, "notice", data.message);
      break;
    case "failure":
      logLine(event, "error", `cell ${data.cell_index} raised ${data.ename}: ${data.evalue}`);
      break;
    case "state":
      logLine(event, "state", stateText(data));
      setState(data.state);
      if (FINAL.has(data.state)) finish(data);
      break;
    default:
      logLine(event, event.kind, JSON.stringify(data));
  }
}

function stateText(data) {
  const extra = [];
  if (data.exit_code !== undefined && data.exit_code !== null) extra.push(`exit code ${data.exit_code}`);
  if (data.reason) extra.push(data.reason);
  return `state: ${data.state}${extra.length ? ` (${extra.join("; ")})` : ""}`;
}

function logLine(event, level, text) {
  const log = $("log");
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  const li = document.createElement("li");
  li.className = level;
  li.dataset.seq = String(event.seq);
  li.dataset.kind = event.kind;
  const ts = document.createElement("span");
  ts.className = "ts";
  ts.textContent = new Date(event.ts * 1000).toLocaleTimeString([], { hour12: false });
  const lv = document.createElement("span");
  lv.className = "lv";
  lv.textContent = level;
  const msg = document.createElement("span");
  msg.className = "msg";
  msg.textContent = text == null ? "" : String(text);
  li.append(ts, lv, msg);
  log.append(li);
  if (atBottom) log.scrollTop = log.scrollHeight;
}

function setProgress(done, total, message) {
  const bar = $("progress");
  const max = Number(total) > 0 ? Number(total) : 1;
  bar.max = max;
  bar.value = Math.min(Number(done) || 0, max);
  const percent = Math.round((bar.value / max) * 100);
  $("progress-label").textContent = total ? `${done} / ${total}${message ? ` · ${message}` : ""} (${percent}%)` : "";
}

function setState(state, detail) {
  const badge = $("run-state");
  badge.textContent = state;
  badge.className = `badge ${state}`;
  badge.title = detail || "";
  $("cancel-button").hidden = FINAL.has(state);
}

function finish(data) {
  ui.finished = true;
  closeStream();
  $("run-stream").textContent = "";
  const errors = Number(data.error_count || 0);
  const warnings = Number(data.warning_count || 0);
  const outcome = $("run-outcome");
  let text;
  const lost = Number(data.events_lost || 0);
  if (data.state === "succeeded" && (errors > 0 || lost > 0)) {
    const badge = $("run-state");
    badge.textContent = "finished with errors";
    badge.className = "badge with-errors";
    text = `Finished with errors: ${errors} error(s), ${warnings} warning(s) were logged.`;
    if (lost) text += ` ${lost} event(s) could not be stored.`;
  } else if (data.state === "succeeded") {
    text = warnings ? `Succeeded with ${warnings} warning(s).` : "Succeeded.";
  } else {
    text = `${data.state[0].toUpperCase()}${data.state.slice(1)}${data.reason ? `: ${data.reason}` : "."}`;
  }
  outcome.textContent = text;
  outcome.hidden = false;
  loadHistory();
}

async function cancelRun() {
  if (!ui.runId) return;
  $("cancel-button").disabled = true;
  try {
    await api(`/api/runs/${ui.runId}/cancel`, { body: {} });
  } catch (error) {
    $("run-stream").textContent = `cancel failed: ${error.message}`;
  } finally {
    $("cancel-button").disabled = false;
  }
}

// -- run history ------------------------------------------------------------------------

async function loadHistory() {
  const query = new URLSearchParams({ limit: "50" });
  if ($("history-this-task").checked && ui.task) query.set("task", ui.task.id);
  let runs;
  try {
    runs = (await api(`/api/runs?${query}`)).runs;
  } catch (error) {
    $("run-list").replaceChildren(item(null, `History unavailable: ${error.message}`));
    return;
  }
  const rows = runs.map((run) => {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.run = String(run.id);
    const name = document.createElement("span");
    name.className = "name";
    const when = new Date(run.created_at * 1000).toLocaleString([], { hour12: false });
    name.textContent = `#${run.id} ${run.task_id}`;
    name.title = `${when}\nrequested by ${run.requested_by}`;
    const badge = document.createElement("span");
    const withErrors = run.state === "succeeded" && (run.error_count > 0 || run.events_lost > 0);
    badge.className = `badge ${withErrors ? "with-errors" : run.state}`;
    badge.textContent = withErrors ? "with errors" : run.state;
    button.append(name, badge);
    button.addEventListener("click", () => openRun(run.id));
    return item(button);
  });
  $("run-list").replaceChildren(...(rows.length ? rows : [item(null, "No runs yet.")]));
  markCurrentRun();
}

function markCurrentRun() {
  for (const button of $("run-list").querySelectorAll("button")) {
    if (Number(button.dataset.run) === ui.runId) button.setAttribute("aria-current", "true");
    else button.removeAttribute("aria-current");
  }
}

// Every state change of every run refreshes the history (a run started elsewhere shows up).
function watchStates() {
  const states = new EventSource("/api/events?kind=state");
  let pending = null;
  states.onmessage = () => {
    if (pending) return;
    pending = setTimeout(() => { pending = null; loadHistory(); checkDaemon(); }, 250);
  };
}

// -- start ------------------------------------------------------------------------------

async function start() {
  $("task-form").addEventListener("submit", submitRun);
  $("cancel-button").addEventListener("click", cancelRun);
  $("show-hidden").addEventListener("change", loadTasks);
  $("history-this-task").addEventListener("change", loadHistory);
  const wanted = readHash();
  await checkDaemon();
  setInterval(checkDaemon, 5000);
  await loadTasks();
  const known = ui.tasks.some((task) => task.id === wanted.task);
  if (wanted.task && !known && !$("show-hidden").checked) {
    // A hidden task in the address: show hidden tasks so it can be selected.
    $("show-hidden").checked = true;
    await loadTasks();
  }
  if (wanted.task) await selectTask(wanted.task);
  else if (ui.tasks.length) await selectTask(ui.tasks[0].id);
  if (wanted.run) openRun(wanted.run);
  loadHistory();
  watchStates();
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", start);
