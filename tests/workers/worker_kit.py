"""What test workers share: notes for the test to read and gates for the test to open.

Both are files in ``meet/`` beside the duft-config folder (``$DUFT_CONFIG_DIR/..``),
named after the run, so a worker needs neither the bus nor its parameters to use them.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

RUN_ID = os.environ.get("DUFT_RUN_ID", "standalone")
MEET = Path(os.environ.get("DUFT_CONFIG_DIR", ".")).resolve().parent / "meet"
GATE_TIMEOUT_S = 30.0


def note(name: str, value: Any) -> None:
    """Write ``value`` as ``meet/<name>-<run id>.json``, atomically."""
    MEET.mkdir(parents=True, exist_ok=True)
    partial = MEET / f".{name}-{RUN_ID}.partial"
    partial.write_text(json.dumps(value), encoding="utf-8")
    partial.replace(MEET / f"{name}-{RUN_ID}.json")


def wait_gate(name: str = "gate") -> None:
    """Block until the test opens the gate; exit 2 if it never does (no test hangs on us)."""
    gate = MEET / f"{name}-{RUN_ID}"
    deadline = time.monotonic() + GATE_TIMEOUT_S
    while not gate.exists():
        if time.monotonic() > deadline:
            print(f"gate {gate} never opened", file=sys.stderr)
            sys.exit(2)
        time.sleep(0.01)  # wait-ok: polling interval of a bounded wait


def sleep_forever() -> None:
    """Hang until killed."""
    while True:
        time.sleep(3600)  # wait-ok: a hanging task is the point
