"""DUFT tasks as they are written, run unchanged: every historical import path, the UPDATE
task, undeclared connections, executeFromRoot's duft-server/ and the data stack, under a
real duftd and standalone. The tasks here are written for these tests."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nbformat
import pytest

from dte_tools.wire import Op
from tests.harness import (
    DaemonProcess,
    add_script_task,
    copy_config,
    environment_without_duft,
    final_state_event,
    log_messages,
    wait_for,
)

NAMES_TASK = """
import json, os, sys
from services.dte_tools.data_task_tools import (find_json_arg,
    get_resolved_parameters_for_connection, post_file_to_duft_server, purge_temp_dir)
from services.dte_tools.update_tools import download_github_repo as update_from_services
from services.config.service.config_directories import directories, get_directories
from api_data_task_executioner.data_task_tools import (get_data_dir, get_temp_dir,
    post_file_to_duft_server as older_post, purge_temp_dir as older_purge)
from core.environment import Environment
from core.update_tools import download_github_repo as update_from_core
from src.dte.data_task_tools import initialise_data_task as oldest_initialise
import dte_tools, dte_tools.update_tools

handle = Environment("names check", find_json_arg(sys.argv))
temp = get_directories().data_tasks_temp_directory
with open(os.path.join(temp, "left-over.csv"), "w") as leftover:
    leftover.write("a,b\\n")
os.makedirs(os.path.join(temp, "left", "over"), exist_ok=True)
purged = purge_temp_dir()
handle.log_message(json.dumps({
    "one_implementation": oldest_initialise is dte_tools.initialise_data_task
        and update_from_core is update_from_services is dte_tools.update_tools.download_github_repo
        and older_post is post_file_to_duft_server is dte_tools.post_file_to_duft_server
        and older_purge is purge_temp_dir is dte_tools.purge_temp_dir,
    "data": directories.data_directory, "temp": temp, "data_dir": get_data_dir(),
    "temp_dir": get_temp_dir(), "purged": purged, "left_in_temp": os.listdir(purged),
    "ana": get_resolved_parameters_for_connection("ANA").get("type"),
}))
"""

OWN_PACKAGES_TASK = """
from core.environment import Environment
from src.tools import WHO
from services.dte_tools.data_task_tools import initialise_data_task
initialise_data_task("own packages").log_message(f"{Environment} {WHO}")
"""

UNDECLARED_TASK = """
from services.dte_tools.data_task_tools import (initialise_data_task,
    get_resolved_parameters_for_connection)
handle = initialise_data_task("undeclared")
handle.log_message("EMR type: " + get_resolved_parameters_for_connection("EMR")["type"])
get_resolved_parameters_for_connection("EMR")
"""

ROOT_TASK = """
import importlib.util, os, sys
folder = os.path.dirname(os.path.abspath(__file__))
while not os.path.isdir(os.path.join(folder, "duft-server")):
    if os.path.dirname(folder) == folder:
        print("duft-server directory not found!")
        sys.exit(1)
    folder = os.path.dirname(folder)
server = os.path.join(folder, "duft-server")
os.chdir(server)
sys.path.insert(0, server)

def by_path(name):
    path = os.path.join(server, "services", "dte_tools", name + ".py")
    spec = importlib.util.spec_from_file_location("loaded_" + name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

updater, tools = by_path("update_tools"), by_path("data_task_tools")
from services.dte_tools.data_task_tools import initialise_data_task
import dte_tools.update_tools
handle = tools.initialise_data_task("from the root")
same_update = updater.download_github_repo is dte_tools.update_tools.download_github_repo
same_tools = tools.initialise_data_task is initialise_data_task
handle.log_message(f"root layout ok: {same_update} {same_tools}")
"""

UPDATE_TASK = """
import sys
from services.dte_tools.update_tools import download_github_repo
from services.dte_tools.data_task_tools import find_json_arg, initialise_data_task
args = find_json_arg(sys.argv)
handle = initialise_data_task("Configuration updater", params=args)
handle.log_message(f"updating {args['final_repo_name']} from {args['repo_url']}")
download_github_repo(args["repo_url"], args["save_path"], final_repo_name=args["final_repo_name"],
                     branch=args["branch"], user_dir="user")
handle.log_message("update done")
"""

DATA_STACK_TASK = """
import os
import pandas as pd
import sqlalchemy as sa
from services.dte_tools.data_task_tools import get_data_dir, initialise_data_task
engine = sa.create_engine("sqlite:///" + os.path.join(get_data_dir(), "stack.sqlite"))
frame = pd.DataFrame({"facility": ["north", "south"], "visits": [3, 4]})
frame.to_sql("visits", engine, index=False)
total = pd.read_sql("SELECT SUM(visits) AS n FROM visits", engine)["n"][0]
import jaydebeapi, jpype, sqlalchemy_pytds, importlib.util
odbc = importlib.util.find_spec("pyodbc") is not None
initialise_data_task("stack").log_message(f"visits={total} jdbc={jaydebeapi.__name__} odbc={odbc}")
"""


def run_standalone(script: Path, data: Path, *args: str) -> list[str]:
    """Run a task file as its author would (no daemon); its INFO and WARNING lines."""
    result = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=script.parent,
        env=environment_without_duft(DUFT_DATA_DIR=str(data)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return re.findall(r"^\S+ \S+ (?:INFO|WARNING)\s+(.*)$", result.stdout, re.M)


def run_task(daemon: DaemonProcess, task: str, **params: object) -> list[dict]:
    run = daemon.submit(task, **params)["run"]
    daemon.wait_final(run["id"])
    return daemon.events(run["id"])


def succeeded(events: list[dict]) -> list[dict]:
    final = final_state_event(events)
    assert final["data"]["state"] == "succeeded", events
    return events


# -- import paths ---------------------------------------------------------------------


def test_every_duft_import_path_under_the_daemon_and_standalone(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    """A task importing each historical name gets dte_tools' own functions, the data and
    temp folders, an emptied temp folder and its connection, with and without duftd."""
    add_script_task(config_dir, "NAMES", NAMES_TASK, dataConnections=["ANA"])
    daemon = daemon_factory(config_dir)
    under_daemon = json.loads(log_messages(succeeded(run_task(daemon, "NAMES")))[0])
    standalone_data = tmp_path / "standalone-data"
    script = config_dir / "system" / "data_tasks" / "names.py"
    standalone = json.loads(run_standalone(script, standalone_data)[0])
    for seen, data in ((under_daemon, daemon.data_dir), (standalone, standalone_data)):
        assert seen["one_implementation"] is True
        assert seen["data"] == seen["data_dir"] == str(data)
        assert seen["temp"] == seen["temp_dir"] == seen["purged"] == str(data / "temp")
        assert seen["left_in_temp"] == []
        assert seen["ana"] == "sqlite3"


def test_notebook_imports_the_old_paths_and_the_data_stack(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """A notebook (on this venv's kernel) imports core/src paths, pandas and SQLAlchemy."""
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("params = {}"),
        nbformat.v4.new_code_cell(
            "import pandas, sqlalchemy\n"
            "from core.environment import Environment\n"
            "from src.dte.data_task_tools import get_data_dir\n"
            "from services.config.service.config_directories import get_directories\n"
            "handle = Environment('notebook', params)\n"
            "frame = pandas.DataFrame({'n': [1, 2, 3]})\n"
            "handle.log_message(f\"sum={frame['n'].sum()} sa={sqlalchemy.__version__[0]} \"\n"
            '                   f"same={get_directories().data_directory == get_data_dir()}")'
        ),
    ]
    nbformat.write(notebook, config_dir / "system" / "data_tasks" / "compat.ipynb")
    add_script_task(config_dir, "NB", "", pythonFile="compat.ipynb")
    nbformat.write(notebook, config_dir / "system" / "data_tasks" / "compat.ipynb")
    daemon = daemon_factory(config_dir)
    assert log_messages(succeeded(run_task(daemon, "NB"))) == ["sum=6 sa=2 same=True"]


def test_a_users_own_core_and_src_packages_win(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    """Regular `core` and `src` packages beside a task are imported, not our aliases."""
    tasks = config_dir / "system" / "data_tasks"
    for package, module, text in (
        ("core", "environment.py", "Environment = 'users own Environment'\n"),
        ("src", "tools.py", "WHO = 'users own src'\n"),
    ):
        (tasks / package).mkdir()
        (tasks / package / "__init__.py").write_text("")
        (tasks / package / module).write_text(text)
    add_script_task(config_dir, "OWN", OWN_PACKAGES_TASK)
    expected = ["users own Environment users own src"]
    assert run_standalone(tasks / "own.py", tmp_path / "data2") == expected
    daemon = daemon_factory(config_dir)
    assert log_messages(succeeded(run_task(daemon, "OWN"))) == expected


# -- undeclared connections -------------------------------------------------------------


def test_undeclared_connection_is_handed_over_with_one_warning(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """A task reading a connection it does not declare gets it, as in DUFT, and its run
    carries one warning naming the task and the connection."""
    add_script_task(config_dir, "LAB", UNDECLARED_TASK, dataConnections=["ANA"])
    daemon = daemon_factory(config_dir)
    events = succeeded(run_task(daemon, "LAB"))
    warnings = [e["data"]["message"] for e in events if e["data"].get("level") == "warning"]
    assert warnings == [
        "task LAB read connection EMR, which its dataConnections do not list; "
        f"add it in {config_dir.resolve() / 'system' / 'data_tasks.json'}"
    ]
    assert "EMR type: sqlite3" in log_messages(events)


def test_strict_connections_setting_restores_the_refusal(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """With `strictConnections` in user/config.json the same task fails on the refusal."""
    user_file = config_dir / "user" / "config.json"
    user = json.loads(user_file.read_text())
    user["settings"]["strictConnections"] = True
    user_file.write_text(json.dumps(user))
    add_script_task(config_dir, "LAB", UNDECLARED_TASK, dataConnections=["ANA"])
    daemon = daemon_factory(config_dir)
    events = run_task(daemon, "LAB")
    assert final_state_event(events)["data"]["state"] == "failed"
    stderr = "".join(e["data"]["text"] for e in events if e["kind"] == "stderr")
    assert "does not declare connection 'EMR'" in stderr


def test_validate_warns_where_the_source_names_an_undeclared_connection(
    config_dir: Path,
) -> None:
    """`duft validate` names the task, the connection and the field to fix."""
    add_script_task(config_dir, "LAB", UNDECLARED_TASK, dataConnections=["ANA"])
    result = subprocess.run(
        [sys.executable, "-m", "clients.cli.validate", "--config", str(config_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = json.loads(result.stdout)
    found = [
        d
        for d in report["diagnostics"]
        if d["task_id"] == "LAB" and d["connection_id"] == "EMR" and d["severity"] == "warning"
    ]
    assert len(found) == 1 and found[0]["field"] == "dataConnections", report["diagnostics"]


# -- executeFromRoot ----------------------------------------------------------------------


def test_execute_from_root_finds_duft_server_beside_it(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """A root task walks up to duft-server/, loads its tools by file path, and they are ours."""
    add_script_task(config_dir, "ROOT", ROOT_TASK, executeFromRoot=True)
    daemon = daemon_factory(config_dir)
    assert log_messages(succeeded(run_task(daemon, "ROOT"))) == ["root layout ok: True True"]


# -- UPDATE ---------------------------------------------------------------------------------


def remote_config(tmp_path: Path) -> Path:
    """The configuration as its repository has it: one more task, other user values."""
    remote = copy_config(tmp_path / "remote" / "duft-config")
    add_script_task(remote, "ADDED-BY-UPDATE", "print('new')\n")
    (remote / "user" / "config.json").write_text('{"dataConnectionParameters": {}}')
    return remote


def zip_of(folder: Path, target: Path, top: str) -> Path:
    with zipfile.ZipFile(target, "w") as zipped:
        for path in sorted(folder.rglob("*")):
            zipped.write(path, f"{top}/{path.relative_to(folder)}")
    return target


@pytest.fixture
def served_repo(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A local HTTP server (127.0.0.1, free port) laid out as GitHub serves branch zips;
    yields (the folder where ``<branch>.zip`` files go, the repository's URL)."""
    root = tmp_path / "web"
    archives = root / "org" / "duft-config" / "archive" / "refs" / "heads"
    archives.mkdir(parents=True)
    handler = partial(SimpleHTTPRequestHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield archives, f"http://127.0.0.1:{server.server_address[1]}/org/duft-config"
    server.shutdown()
    server.server_close()


def update_params(repo_url: str, save_path: Path, branch: str) -> dict[str, str]:
    return {
        "repo_url": repo_url,
        "save_path": str(save_path),
        "final_repo_name": "duft-config",
        "branch": branch,
    }


def add_update_task(config_dir: Path) -> None:
    names = ("repo_url", "save_path", "final_repo_name", "branch")
    add_script_task(
        config_dir,
        "UPDATE",
        UPDATE_TASK,
        pythonFile="update.py",
        executeFromRoot=True,
        supportedParameters={n: {"defaultValue": "", "allowOverride": True} for n in names},
    )


def mark_user_values(config_dir: Path) -> str:
    user_file = config_dir / "user" / "config.json"
    user = json.loads(user_file.read_text())
    user["facility"] = "kept across updates"
    user_file.write_text(json.dumps(user))
    return user_file.read_text()


def test_update_from_a_served_zip_swaps_the_config_and_the_daemon_reloads(
    config_dir: Path,
    daemon_factory: Callable[..., DaemonProcess],
    served_repo: tuple[Path, str],
    tmp_path: Path,
) -> None:
    """UPDATE downloads the branch zip over HTTP with progress, swaps duft-config keeping
    user/ and a backup, and duftd serves the new task list once the run has ended."""
    archives, url = served_repo
    zip_of(remote_config(tmp_path), archives / "main.zip", "duft-config-main")
    add_update_task(config_dir)
    user_text = mark_user_values(config_dir)
    daemon = daemon_factory(config_dir)
    assert "ADDED-BY-UPDATE" not in {t["id"] for t in daemon.request(Op.TASKS)["tasks"]}
    params = update_params(url, tmp_path / "downloads", "main")
    events = succeeded(run_task(daemon, "UPDATE", **params))
    assert any(e["kind"] == "progress" and e["data"]["done"] > 0 for e in events)
    assert (config_dir / "user" / "config.json").read_text() == user_text
    backups = list(tmp_path.glob("duft-config.backup-*"))
    assert len(backups) == 1 and (backups[0] / "system" / "data_tasks" / "update.py").is_file()
    assert (tmp_path / "downloads" / "duft-config-main.zip").is_file()
    assert "ADDED-BY-UPDATE" in {t["id"] for t in daemon.request(Op.TASKS)["tasks"]}
    wait_for(lambda: "config folder replaced" in daemon.log_text(), 10, "the reload log line")
    assert "ADDED-BY-UPDATE" in daemon.log_text()


def test_a_broken_archive_leaves_everything_as_it_was(
    config_dir: Path,
    daemon_factory: Callable[..., DaemonProcess],
    served_repo: tuple[Path, str],
    tmp_path: Path,
) -> None:
    """A corrupt zip fails the run with a clear error; the config, its tasks and the
    folder beside it are unchanged (no backup, no staging folder left)."""
    archives, url = served_repo
    (archives / "broken.zip").write_bytes(b"PK\x03\x04 this is not really a zip")
    add_update_task(config_dir)
    tasks_text = (config_dir / "system" / "data_tasks.json").read_text()
    daemon = daemon_factory(config_dir)
    tasks_before = daemon.request(Op.TASKS)["tasks"]
    params = update_params(url, tmp_path / "downloads", "broken")
    events = run_task(daemon, "UPDATE", **params)
    assert final_state_event(events)["data"]["state"] == "failed"
    stderr = "".join(e["data"]["text"] for e in events if e["kind"] == "stderr")
    assert "is not a readable zip file" in stderr and "nothing was changed" in stderr
    assert (config_dir / "system" / "data_tasks.json").read_text() == tasks_text
    assert daemon.request(Op.TASKS)["tasks"] == tasks_before
    assert not [p for p in tmp_path.iterdir() if "duft-config." in p.name]  # no backup, staging


def test_update_from_a_local_git_repository_standalone(config_dir: Path, tmp_path: Path) -> None:
    """Standalone, UPDATE takes a branch of a local git repository (file://) the same way."""
    remote = remote_config(tmp_path)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "-C", str(remote)]
    for command in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "v2"]):
        subprocess.run([*git, *command], check=True, timeout=30)
    add_update_task(config_dir)
    user_text = mark_user_values(config_dir)
    params = update_params(f"file://{remote}", tmp_path / "downloads", "main")
    script = config_dir / "system" / "data_tasks" / "update.py"
    lines = run_standalone(script, tmp_path / "data", json.dumps(params))
    assert lines[-1] == "update done"
    tasks = json.loads((config_dir / "system" / "data_tasks.json").read_text())["dataTasks"]
    assert "ADDED-BY-UPDATE" in {t["id"] for t in tasks}
    assert (config_dir / "user" / "config.json").read_text() == user_text
    assert len(list(tmp_path.glob("duft-config.backup-*"))) == 1


# -- the data stack --------------------------------------------------------------------------


def test_the_data_stack_is_there_for_tasks(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """pandas and SQLAlchemy write and read SQLite in a task; JayDeBeApi, JPype, the pytds
    dialect and pyodbc are installed in the environment tasks run in."""
    add_script_task(config_dir, "STACK", DATA_STACK_TASK)
    daemon = daemon_factory(config_dir)
    expected = ["visits=7 jdbc=jaydebeapi odbc=True"]
    assert log_messages(succeeded(run_task(daemon, "STACK"))) == expected
    assert shutil.which("git")  # UPDATE's local-repository path needs git (see the README)
