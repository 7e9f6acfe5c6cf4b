"""Starts a child in its own process group and one that escapes into a new session (with
its output elsewhere), notes every pid, and hangs: cancelling it must leave none alive."""

import os
import subprocess
import sys

import worker_kit

sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]  # wait-ok: a hanging child
child = subprocess.Popen(sleeper)
escaped = subprocess.Popen(
    sleeper, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
)
worker_kit.note("ready", {"pid": os.getpid(), "child": child.pid, "escaped": escaped.pid})
worker_kit.sleep_forever()
