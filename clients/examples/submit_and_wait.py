"""Submit a task to duftd and wait for its end, using only pyzmq and the documented wire format.

    python submit_and_wait.py TASK ['{"name": "x"}'] [STATE_DIR]

Exits 0 when the run succeeded, 1 otherwise.
"""

import hashlib
import hmac
import json
import os
import sys
import time
import uuid
from pathlib import Path

import zmq

task = sys.argv[1]
params = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
state_dir = Path(sys.argv[3] if len(sys.argv) > 3 else os.environ.get("DUFT_STATE_DIR", ".duftd"))
info = json.loads((state_dir / "duftd.json").read_text())
key = info["key"].encode()


def secure(socket: zmq.Socket) -> None:
    """A daemon listening on tcp requires CURVE: use the client keypair it made (in the
    connection file). Over ipc (the default) there is nothing to do."""
    if "curve_client_secret" in info:
        socket.curve_serverkey = info["curve_server_key"].encode()
        socket.curve_publickey = info["curve_client_public"].encode()
        socket.curve_secretkey = info["curve_client_secret"].encode()


control = zmq.Context().socket(zmq.DEALER)
secure(control)
control.connect(info["control"])


def request(op: str, **args: object) -> dict:
    """One control request: [b"duft/1", b"client", hex HMAC-SHA256(key, body), body]."""
    body = json.dumps({"op": op, "id": uuid.uuid4().hex, "ts": time.time(), "args": args}).encode()
    signature = hmac.new(key, body, hashlib.sha256).hexdigest().encode()
    control.send_multipart([b"duft/1", b"client", signature, body])
    if not control.poll(10_000):
        sys.exit("duftd did not answer")
    _, _, reply = control.recv_multipart()
    reply = json.loads(reply)
    if not reply["ok"]:
        sys.exit(f"refused: {reply['error']['code']}: {reply['error']['message']}")
    return reply["result"]


submitted = request("submit", task=task, params=params)
run = submitted["run"]
print(
    f"run {run['id']} of {run['task_id']}"
    + (" (joined the active run)" if submitted["joined"] else "")
)
# Page through the run's stored events until the final state: nothing is missed.
after, final = 0, False
while not final:
    page = request("events", run=run["id"], after=after)
    for event in page["events"]:
        after = event["seq"]
        data = event["data"]
        print(f"#{event['seq']} {event['kind']}: {data.get('message') or data.get('text') or data}")
    final = page["final"]
    if not page["events"] and not final:
        time.sleep(0.2)  # nothing new yet
state = request("run", run=run["id"])["run"]["state"]
print(f"run {run['id']} {state}")
sys.exit(0 if state == "succeeded" else 1)
