"""Starts a detached child that keeps the worker's stdout and stderr open, then exits 0 at
once (a task that "daemonises" a helper and forgets it)."""

import os
import subprocess
import sys

import worker_kit

sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]  # wait-ok: a hanging child
escaped = subprocess.Popen(sleeper, start_new_session=True)
worker_kit.note("ready", {"pid": os.getpid(), "escaped": escaped.pid})
print("leaving my helper behind")
