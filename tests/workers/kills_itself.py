"""Dies of SIGKILL, sent to itself (as the OOM killer would)."""

import os
import signal

print("about to be killed", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
