"""Ignores SIGTERM and hangs: only SIGKILL can stop it."""

import os
import signal

import worker_kit

signal.signal(signal.SIGTERM, signal.SIG_IGN)
worker_kit.note("ready", {"pid": os.getpid()})
worker_kit.sleep_forever()
