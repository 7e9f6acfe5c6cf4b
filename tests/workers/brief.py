"""Works for a moment and succeeds (a queue filler)."""

import time

time.sleep(0.2)  # wait-ok: simulated work, long enough for runs to overlap if allowed
