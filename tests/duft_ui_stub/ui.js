// What DUFT's web UI does with the bridge, reduced to the calls and rules it depends on.
const MARKERS = new Set(["script_start", "script_complete", "scriptError"]);
const base = `${location.origin}/api/v2`;

async function getJson(path) {
  const response = await fetch(`${base}${path}`);
  const body = await response.json();
  if (!response.ok) throw new Error(body.message);
  return body;
}

async function runDataTask(task) {
  const response = await fetch(`${base}/run-data-task`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ data_task_id: task, parameters: {} }),
  });
  const body = await response.json();
  document.querySelector("#error").textContent = response.ok ? "" : body.message;
}

function listen() {
  const source = new EventSource(`${location.origin}/sse/dte/`);
  source.onmessage = (message) => {
    const frame = JSON.parse(message.data);
    document.querySelector("#dot").dataset.running = String(frame.isRunning);
    if (frame.dataTask === "script_start") document.querySelector("#status").textContent = "running";
    if (frame.dataTask === "script_complete") document.querySelector("#status").textContent = "complete";
    if (frame.dataTask === "scriptError") document.querySelector("#status").textContent = "error";
    if (frame.dataTask && !MARKERS.has(frame.dataTask) && frame.message.length <= 150) {
      const item = document.createElement("li");
      item.textContent = frame.message;
      document.querySelector("#lines").append(item);
    }
  };
  source.onerror = () => source.close();  // as DUFT's UI: no reconnect
}

async function start() {
  const config = await getJson("/get-current-config");
  document.querySelector("#app-name").textContent = config.settings.appName;
  const navigation = await getJson("/navigation");
  for (const item of navigation.system.dataTasks.items) {
    const button = document.createElement("button");
    button.dataset.task = item.task;
    button.textContent = item.title;
    button.addEventListener("click", () => runDataTask(item.task));
    document.querySelector("#tasks").append(button);
  }
  listen();
  document.body.dataset.ready = "true";
}

start().catch((error) => { document.querySelector("#error").textContent = String(error); });
