"""``duft``: the command line for duftd (and ``duft validate``, which needs no daemon).

Exit codes: 0 success; 1 a run failed, was cancelled or lost, or validation found
errors; 2 bad usage or a refused request; 3 no daemon running; 130 Ctrl-C.

Its size is one short function per subcommand beside the parser that names them all,
so the command line can be read in one place; other subcommand groups have modules.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from clients.bus import BusClient, ConnectionInfo, DaemonError, DaemonNotRunning
from clients.cli import connections, render, schedules, users, validate
from clients.cli.assignments import AssignmentError, parse_cli_assignments
from dte_tools.wire import ACTIVE_STATES, Op

RUN_COLUMNS = [
    ("id", "RUN"),
    ("task_id", "TASK"),
    ("state", "STATE"),
    ("created", "CREATED"),
    ("duration", "TOOK"),
    ("error_count", "ERRORS"),
    ("requested_by", "BY"),
]


def _client(args: argparse.Namespace) -> BusClient:
    return BusClient(ConnectionInfo.load(args.state_dir))


def _run_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        took = None
        if run.get("started_at") and run.get("ended_at"):
            took = f"{run['ended_at'] - run['started_at']:.1f}s"
        rows.append({**run, "created": render.stamp(run["created_at"]), "duration": took})
    return rows


def cmd_status(args: argparse.Namespace, client: BusClient) -> int:
    health = client.request(Op.HEALTH)
    if args.json:
        render.as_json(health)
        return 0
    runs = ", ".join(f"{n} {state}" for state, n in sorted(health["runs"].items())) or "no runs yet"
    render.console.print(
        f"duftd {health['version']} (pid {health['pid']}) up {health['uptime_s']:.0f} s\n"
        f"config: {health['config']}\n"
        f"active: {health['active']} (queued {health['queued']}, "
        f"limit {health['max_concurrent']})\n"
        f"runs: {runs}",
        markup=False,
    )
    return 0


def cmd_tasks(args: argparse.Namespace, client: BusClient) -> int:
    tasks = client.request(Op.TASKS, all=args.all)["tasks"]
    if args.json:
        render.as_json(tasks)
        return 0
    rows = [
        {
            **t,
            "status": "ok" if t["runnable"] else "cannot run",
            "hidden": "hidden" if t["hidden"] else "",
        }
        for t in tasks
    ]
    render.table(
        rows,
        [("id", "TASK"), ("kind", "KIND"), ("name", "NAME"), ("status", "STATUS"), ("hidden", "")],
    )
    return 0


def cmd_show(args: argparse.Namespace, client: BusClient) -> int:
    task = client.request(Op.TASK, task=args.task)["task"]
    if args.json:
        render.as_json(task)
        return 0
    out = render.console
    out.print(
        f"{task['id']}: {task['name']} ({task['kind']}, {task['file']})", style="bold", markup=False
    )
    if task["description"]:
        out.print(task["description"], markup=False)
    for problem in task["problems"]:
        out.print(f"cannot run: {problem}", style="red", markup=False)
    out.print(f"connections: {', '.join(task['connections']) or '-'}", markup=False)
    for name, spec in task["parameters"].items():
        default = repr(spec["default"]) if spec["has_default"] else "(no default)"
        mode = "overridable" if spec["allow_override"] else "fixed"
        out.print(f"  {name} = {default}  [{mode}] {spec['title']}", markup=False)
    return 0


def cmd_run(args: argparse.Namespace, client: BusClient) -> int:
    params = parse_cli_assignments(args.param or [])
    reply = client.request(Op.SUBMIT, task=args.task, params=params, requested_by="cli")
    run = reply["run"]
    if args.json and not args.follow:
        render.as_json(reply)
        return 0
    for name, why in reply["ignored"].items():
        render.console.print(f"ignored parameter {name}: {why}", style="yellow", markup=False)
    verb = "joined the active run" if reply["joined"] else "started run"
    print(f"{verb} {run['id']} of {run['task_id']} ({run['state']})", file=sys.stderr)
    if not args.follow:
        return 0
    return _follow(client, run["id"], args.json)


def cmd_runs(args: argparse.Namespace, client: BusClient) -> int:
    runs = client.request(Op.RUNS, task=args.task, state=args.state, limit=args.limit)["runs"]
    if args.json:
        render.as_json(runs)
        return 0
    render.table(_run_rows(runs), RUN_COLUMNS)
    return 0


def cmd_logs(args: argparse.Namespace, client: BusClient) -> int:
    if args.follow:
        return _follow(client, args.run, args.json)
    events = []
    after = 0
    while True:
        page = client.request(Op.EVENTS, run=args.run, after=after)
        events.extend(page["events"])
        if not page["more"]:
            break
        after = events[-1]["seq"]
    if args.json:
        render.as_json(events)
    else:
        render.print_events(events)
    return 0


def cmd_cancel(args: argparse.Namespace, client: BusClient) -> int:
    run = client.request(Op.CANCEL, run=args.run)["run"]
    if args.json:
        render.as_json(run)
    else:
        print(f"run {run['id']} of {run['task_id']}: {run['state']}")
    return 0


def cmd_output(args: argparse.Namespace, client: BusClient) -> int:
    run = client.request(Op.RUN, run=args.run)["run"]
    if args.json:
        render.as_json({"run": run["id"], "output": run["output"]})
        return 0
    run_id, state = run["id"], run["state"]
    if not run["output"]:
        print(
            f"duft: run {run_id} of {run['task_id']} is a script run: "
            "only notebook runs keep an executed copy",
            file=sys.stderr,
        )
        return 2
    if not Path(run["output"]).is_file():
        if state not in ACTIVE_STATES:
            print(
                f"duft: run {run_id} ({state}) kept no executed notebook: its runner "
                f"ended before writing one (`duft logs {run_id}` shows why)",
                file=sys.stderr,
            )
            return 1
        print(
            f"duft: run {run_id} is {state}; its notebook is written here when it ends",
            file=sys.stderr,
        )
    print(run["output"])
    return 0


def cmd_reload(args: argparse.Namespace, client: BusClient) -> int:
    result = client.request(Op.RELOAD)
    if args.json:
        render.as_json(result)
    else:
        print(
            f"reloaded {result['config']}: {result['tasks']} tasks ({result['runnable']} "
            f"runnable), {result['errors']} errors, {result['warnings']} warnings"
        )
    return 0


def _follow(client: BusClient, run_id: int, as_json: bool) -> int:
    """Show a run live until it ends; Ctrl-C stops following and leaves it running."""
    try:
        events = client.follow(run_id)
        if as_json:
            last = None
            for event in events:
                render.as_json(event)
                last = event
        else:
            last = render.follow_with_progress(events)
    except KeyboardInterrupt:
        print(
            f"\nstopped following; run {run_id} goes on (`duft logs {run_id} --follow`)",
            file=sys.stderr,
        )
        return 130
    state = last["data"].get("state") if last else None
    return 0 if state == "succeeded" else 1


COMMANDS = {
    "status": cmd_status,
    "tasks": cmd_tasks,
    "show": cmd_show,
    "run": cmd_run,
    "runs": cmd_runs,
    "logs": cmd_logs,
    "cancel": cmd_cancel,
    "output": cmd_output,
    "reload": cmd_reload,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="duft", description="Run and follow DUFT data tasks.")
    parser.add_argument(
        "--state-dir", type=Path, help="duftd's state folder (default: $DUFT_STATE_DIR or ./.duftd)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=COMMANDS[name])
        return p

    command("status", "the daemon's health and run counts")
    command("tasks", "list tasks").add_argument(
        "--all", action="store_true", help="include hidden tasks"
    )
    command("show", "show one task and its parameters").add_argument("task")
    p = command("run", "run a task")
    p.add_argument("task")
    p.add_argument(
        "-p",
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="a parameter (JSON where it parses)",
    )
    p.add_argument(
        "-f", "--follow", action="store_true", help="show the log live until the run ends"
    )
    p = command("runs", "list runs, newest first")
    p.add_argument("--task")
    p.add_argument("--state")
    p.add_argument("--limit", type=int, default=20)
    p = command("logs", "show a run's log")
    p.add_argument("run", type=int)
    p.add_argument("-f", "--follow", action="store_true", help="keep following until the run ends")
    command("cancel", "cancel a queued or running run").add_argument("run", type=int)
    command("output", "where a notebook run's executed copy (with outputs) is").add_argument(
        "run", type=int
    )
    command("reload", "make duftd read duft-config again (tasks, connections, schedules)")
    validate.add_parser(sub)
    schedules.add_parser(sub)
    connections.add_parsers(sub)
    users.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.func is validate.run:
        return validate.run(args)
    if getattr(args, "standalone", False):  # finds (or does without) the daemon itself
        try:
            return args.func(args)
        except KeyboardInterrupt:
            return 130
    try:
        with _client(args) as client:
            return args.func(args, client)
    except DaemonNotRunning as error:
        print(f"duft: {error}", file=sys.stderr)
        return 3
    except (DaemonError, AssignmentError) as error:
        code = getattr(error, "code", "bad_parameter")
        print(f"duft: {error} [{code}]", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
