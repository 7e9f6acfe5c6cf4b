"""Notes its pid and hangs until it is stopped."""

import os

import worker_kit

worker_kit.note("ready", {"pid": os.getpid()})
worker_kit.sleep_forever()
