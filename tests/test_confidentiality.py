"""Only its owner sees or starts anything, tried as a real second unix user; and a password
a task leaks in every form it can take is found nowhere: not in the state folder, the
daemon's log, `duft logs`, the events API or the live stream."""

from __future__ import annotations

import base64
import json
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import zmq

from dte_tools.redact import MASK
from dte_tools.wire import CLIENT_SIGNER, Op, encode_request, run_signer, sign
from tests.harness import (
    DaemonProcess,
    RawSocket,
    add_script_task,
    second_user,
    wait_for,
)
from tests.test_notebooks import add_notebook_task, code, duft

# -- a second unix user ----------------------------------------------------------------


SYSTEM_PYTHON = Path("/usr/bin/python3")


@dataclass(frozen=True)
class Stranger:
    """Another local account, with the system's Python and a copy of our pyzmq it can run."""

    name: str
    uid: int
    gid: int
    python: Path
    site: Path  # holds zmq (and pyzmq.libs), on the PYTHONPATH of what it runs

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """``argv`` run as this user, with nothing of ours in its environment."""
        return subprocess.run(
            argv,
            user=self.uid,
            group=self.gid,
            extra_groups=[],
            env={
                "PATH": "/usr/bin:/bin",
                "HOME": "/tmp",
                "LANG": "C.UTF-8",
                "PYTHONPATH": str(self.site),
            },
            cwd="/",
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def system_python_minor() -> str:
    done = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import sys; print(*sys.version_info[:2], sep='.')"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip()


@pytest.fixture(scope="session")
def stranger() -> Iterator[Stranger]:
    """A fresh system user, and /usr/bin/python3 with a copy of our installed pyzmq in a
    folder it can read (our venv lives where other users cannot). No network: the copied
    compiled extension loads because the system Python has our minor version (checked)."""
    ours = "{}.{}".format(*sys.version_info[:2])
    if system_python_minor() != ours:
        pytest.skip(f"{SYSTEM_PYTHON} is not Python {ours}: our pyzmq build cannot load in it")
    with second_user("duftx") as user:
        folder = Path(tempfile.mkdtemp(prefix="duft-stranger-"))
        try:
            installed = Path(zmq.__file__).resolve().parent.parent
            for package in ("zmq", "pyzmq.libs"):
                if (installed / package).is_dir():
                    shutil.copytree(installed / package, folder / package)
            for path in [folder, *folder.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
            yield Stranger(user.pw_name, user.pw_uid, user.pw_gid, SYSTEM_PYTHON, folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder every user may enter (pytest's own temp folders are owner-only, which
    would keep a stranger out whatever duftd does)."""
    folder = Path(tempfile.mkdtemp(prefix="duft-open-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


# -- files -------------------------------------------------------------------------------


def notebook_and_script(config_dir: Path) -> None:
    add_script_task(config_dir, "HELLO", "print('hello from a script')\n")
    add_notebook_task(config_dir, "NB-HELLO", [code("print('hello from a notebook')")])


def test_state_folder_store_and_notebooks_are_owner_only(
    stranger: Stranger,
    open_dir: Path,
    config_dir: Path,
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    """After a script and a notebook ran, every file under the state folder (store, WAL,
    executed notebook, connection file, ipc endpoints) is 0600 and every folder 0700, and
    the second user can neither list the folder nor read the store or the notebook."""
    notebook_and_script(config_dir)
    daemon = daemon_factory(config_dir, state_dir=open_dir / "state")
    script = daemon.wait_final(daemon.submit("HELLO")["run"]["id"])
    notebook = daemon.wait_final(daemon.submit("NB-HELLO")["run"]["id"], 60)
    assert script["state"] == notebook["state"] == "succeeded"
    executed = Path(notebook["output"])
    assert executed.is_file() and daemon.state_dir in executed.parents
    store = daemon.state_dir / "runs.sqlite"
    assert (daemon.state_dir / "runs.sqlite-wal").exists()

    for path in [daemon.state_dir, *daemon.state_dir.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {mode:o}"
    assert stat.S_IMODE(daemon.state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert stat.S_IMODE(executed.stat().st_mode) == 0o600

    listing = stranger.run("/bin/ls", str(daemon.state_dir))
    assert listing.returncode != 0 and "Permission denied" in listing.stderr
    for target in (store, store.with_name("runs.sqlite-wal"), executed, daemon.client.info.path):
        read = stranger.run("/bin/cat", str(target))
        assert read.returncode != 0 and "Permission denied" in read.stderr, target
        assert read.stdout == ""


def test_wider_state_folder_is_tightened_at_start(
    open_dir: Path, config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """A state folder left 0755 with a 0644 notebook in it is made owner-only at start, and
    the daemon's log says so."""
    state = open_dir / "state"
    old_run = state / "runs" / "1"
    old_run.mkdir(parents=True)
    (old_run / "old.ipynb").write_text("{}")
    for path, mode in ((state, 0o755), (state / "runs", 0o755), (old_run, 0o755)):
        path.chmod(mode)
    (old_run / "old.ipynb").chmod(0o644)
    daemon = daemon_factory(config_dir, state_dir=state)
    assert "made it owner-only" in daemon.log_text()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE(old_run.stat().st_mode) == 0o700
    assert stat.S_IMODE((old_run / "old.ipynb").stat().st_mode) == 0o600


# -- sockets -----------------------------------------------------------------------------

# Run as the stranger: listen to every events endpoint, and send control and ingest
# messages, for a while; print what came back.
PROBE = """
import json, os, sys, time, zmq
endpoints, frames, listen_s = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
control, ingest = [[f.encode("latin-1") for f in part] for part in frames]
context = zmq.Context()
poller = zmq.Poller()
subs = []
for kinds in endpoints:
    sub = context.socket(zmq.SUB)
    sub.connect(kinds["events"])
    sub.subscribe(b"")
    subs.append(sub)
    dealer = context.socket(zmq.DEALER)
    dealer.connect(kinds["control"])
    push = context.socket(zmq.PUSH)
    push.connect(kinds["ingest"])
    for socket, message in ((dealer, control), (push, ingest)):
        try:
            socket.send_multipart(message, flags=zmq.NOBLOCK)  # queued until connected
        except zmq.Again:
            pass
    poller.register(sub, zmq.POLLIN)
    poller.register(dealer, zmq.POLLIN)
received = replies = 0
deadline = time.monotonic() + float(listen_s)
while time.monotonic() < deadline:
    for socket, _ in poller.poll(100):
        socket.recv_multipart()
        received, replies = (received + 1, replies) if socket in subs else (received, replies + 1)
print(json.dumps({"received": received, "replies": replies}), flush=True)
os._exit(0)  # not context.term(): it can wait on a refused CURVE handshake
"""

CHATTY = """\
import os, time
from dte_tools import initialise_data_task
environment = initialise_data_task("chatty")
stop = os.path.join(os.path.dirname(os.environ["DUFT_CONFIG_DIR"]), "meet",
                    "stop-" + os.environ["DUFT_RUN_ID"])
deadline = time.monotonic() + 40
while not os.path.exists(stop) and time.monotonic() < deadline:
    environment.log_message("tick")
    time.sleep(0.02)  # wait-ok: a steady stream of events for the test to listen to
"""
LISTEN_S = 3.0


def test_stranger_gets_nothing_from_any_socket_and_changes_nothing(
    stranger: Stranger,
    open_dir: Path,
    config_dir: Path,
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    """While a task streams events, the second user, connecting to every endpoint the
    daemon listens on (ipc in the state folder, and tcp under CURVE), receives no event and
    no reply; its submit and forged ingest batch change nothing."""
    add_script_task(config_dir, "CHATTY", CHATTY)
    daemon = daemon_factory(config_dir, "--port", "0", state_dir=open_dir / "state")
    info = daemon.client.info
    ipc = {name: f"ipc://{daemon.state_dir / f'{name}.ipc'}" for name in ("control", "ingest")}
    ipc["events"] = f"ipc://{daemon.state_dir / 'events.ipc'}"
    tcp = {"control": info.control, "ingest": info.ingest, "events": info.events}
    assert tcp["control"].startswith("tcp://")
    run_id = daemon.submit("CHATTY")["run"]["id"]
    daemon.wait_state(run_id, "running")
    submit = encode_request(Op.SUBMIT, {"task": "SAMPLE"}, b"guessed key", CLIENT_SIGNER)
    body = json.dumps([["log", 0, {"level": "info", "message": "forged"}]]).encode()
    ingest = [b"duft/1", run_signer(run_id), sign(b"guessed", body), body]
    frames = [[f.decode("latin-1") for f in message] for message in (submit, ingest)]

    with RawSocket(zmq.SUB, ipc["events"]) as owner:  # the owner hears the same stream
        owner.socket.subscribe(b"")
        probe = stranger.run(
            str(stranger.python),
            "-c",
            PROBE,
            json.dumps([ipc, tcp]),
            json.dumps(frames),
            str(LISTEN_S),
        )
        assert probe.returncode == 0, probe.stderr
        assert json.loads(probe.stdout) == {"received": 0, "replies": 0}
        assert owner.drain(), "the task's events were flowing while the stranger listened"

    (config_dir.parent / "meet").mkdir(exist_ok=True)
    (config_dir.parent / "meet" / f"stop-{run_id}").touch()
    assert daemon.wait_final(run_id)["state"] == "succeeded"
    assert [run["id"] for run in daemon.request(Op.RUNS)["runs"]] == [run_id]
    messages = [e["data"].get("message") for e in daemon.events(run_id)]
    assert "forged" not in messages and "tick" in messages


# -- a password in every form ------------------------------------------------------------

PASSWORD = 'Pa"s\\wörd$7/✓zq'
LEAKS = """\
import base64, json
from urllib.parse import quote, quote_plus
from dte_tools import get_resolved_parameters_for_connection, initialise_data_task
environment = initialise_data_task("leaks")
pw = get_resolved_parameters_for_connection("ANA")["password"]
print("plain", pw)
print("json", json.dumps({"password": pw}, ensure_ascii=False))
print("json ascii", json.dumps({"password": pw}))
print("repr", repr({"password": pw}))
print("dsn", f"postgresql://duft:{quote(pw, safe='')}@db.local/emr")
print("form", "password=" + quote_plus(pw))
print("base64", base64.b64encode(pw.encode()).decode())
print("basic", base64.b64encode(("duft:" + pw).encode()).decode())
environment.log_message(f"connecting with {pw!r}")
try:
    from IPython.display import display
    display({"password": pw})
except ImportError:
    pass
raise RuntimeError(f"cannot connect with {pw}")
"""


def leak_markers(secret: str) -> list[bytes]:
    """Byte strings any copy of ``secret`` would contain, in each form the task printed."""
    raw = secret.encode()
    texts = [
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
        quote(secret, safe=""),
        quote_plus(secret),
        base64.b64encode(raw).decode().rstrip("="),
        base64.b64encode(b"duft:" + raw).decode()[8:-4],  # the part made of the secret
        "wörd",  # a fragment no escaping of the quote or the backslash hides
        "w\\u00f6rd",
    ]
    return sorted({t.encode() for t in texts} | {json.dumps(t)[1:-1].encode() for t in texts})


@pytest.mark.parametrize("kind", ["script", "notebook"])
def test_password_in_every_form_is_found_nowhere(
    kind: str, config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """A task printing its password plain, as JSON (non-ASCII), repr, in a DSN, a form,
    base64, HTTP Basic, a notebook display() and an exception: none of it is in the state
    folder (store, WAL, executed notebook), the daemon's log, the events API, the live
    stream or `duft logs`, and the masked events are there."""
    user_file = config_dir / "user" / "config.json"
    user = json.loads(user_file.read_text(encoding="utf-8"))
    user["dataConnectionParameters"]["ANA"]["password"] = PASSWORD
    user_file.write_text(json.dumps(user), encoding="utf-8")
    if kind == "script":
        add_script_task(config_dir, "LEAKS", LEAKS, dataConnections=["ANA"])
    else:
        add_notebook_task(config_dir, "LEAKS", [code(LEAKS)], dataConnections=["ANA"])
    daemon = daemon_factory(config_dir)
    with RawSocket(zmq.SUB, daemon.client.info.events) as subscriber:
        subscriber.socket.subscribe(b"ev/")
        published: list[bytes] = []

        def final_published() -> bool:
            published.extend(body for _, body in subscriber.drain())
            return any(b'"state":"failed"' in body for body in published)

        # Subscribe first, so the stream is checked too; a run proves the subscription.
        wait_for(
            lambda: (
                daemon.wait_final(daemon.submit("LEAKS")["run"]["id"], 60) and final_published()
            ),
            90,
            "a LEAKS run seen on the live stream",
            interval=0.1,
        )
    runs = daemon.request(Op.RUNS)["runs"]
    assert all(run["state"] == "failed" for run in runs)
    events = [daemon.events(run["id"]) for run in runs]
    logs = duft(daemon, "logs", str(runs[0]["id"]))
    assert MASK in logs.stdout and "connecting with" in logs.stdout
    assert daemon.stop() == 0
    places = {
        "state folder": b"".join(
            p.read_bytes() for p in daemon.state_dir.rglob("*") if p.is_file()
        ),
        "events API": json.dumps(events, ensure_ascii=False).encode(),
        "live stream": b"".join(published),
        "duft logs": (logs.stdout + logs.stderr).encode(),
    }
    assert MASK.encode() in places["state folder"] and MASK.encode() in places["live stream"]
    for place, text in places.items():
        for marker in leak_markers(PASSWORD):
            assert marker not in text, f"{marker!r} found in the {place}"
