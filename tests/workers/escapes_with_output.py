"""Starts a child that escapes into a new session but keeps the worker's stdout and stderr
pipes open, notes every pid, and hangs."""

import os
import subprocess
import sys

import worker_kit

sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]  # wait-ok: a hanging child
escaped = subprocess.Popen(sleeper, start_new_session=True)
worker_kit.note("ready", {"pid": os.getpid(), "escaped": escaped.pid})
worker_kit.sleep_forever()
