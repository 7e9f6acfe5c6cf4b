"""Print every event duftd publishes, using nothing but pyzmq and the documented wire format.

    python follow_all.py [STATE_DIR]     # default: $DUFT_STATE_DIR or ./.duftd

Each PUB message is [topic, body]: topic ``ev/<task>/<run>/``, body a JSON array of
events of that run. The live stream may skip events under load; a client that must
miss nothing fetches a run's history with the ``events`` control request (see
submit_and_wait.py).
"""

import json
import os
import sys
from pathlib import Path

import zmq

state_dir = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("DUFT_STATE_DIR", ".duftd"))
info = json.loads((state_dir / "duftd.json").read_text())


def secure(socket: zmq.Socket) -> None:
    """A daemon listening on tcp requires CURVE: use the client keypair it made (in the
    connection file). Over ipc (the default) there is nothing to do."""
    if "curve_client_secret" in info:
        socket.curve_serverkey = info["curve_server_key"].encode()
        socket.curve_publickey = info["curve_client_public"].encode()
        socket.curve_secretkey = info["curve_client_secret"].encode()


subscriber = zmq.Context().socket(zmq.SUB)
secure(subscriber)
subscriber.connect(info["events"])
subscriber.subscribe(b"ev/")  # everything; b"ev/SAMPLE/" for one task, b"ev/SAMPLE/7/" for one run
print(f"following {info['events']} (Ctrl-C to stop)", file=sys.stderr)
try:
    while True:
        topic, body = subscriber.recv_multipart()
        for event in json.loads(body):
            print(
                f"run {event['run_id']} {event['task_id']} #{event['seq']} {event['kind']}: "
                f"{json.dumps(event['data'])}"
            )
except KeyboardInterrupt:
    pass
