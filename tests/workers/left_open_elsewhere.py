"""A helper module of leaves_things_open.py: holds a gzip file open in its globals."""

import gzip
from pathlib import Path
from typing import Any

stream: Any = None


def start(path: Path) -> None:
    global stream
    stream = gzip.open(path, "wt", encoding="utf-8")  # noqa: SIM115 - never closed
    stream.write("gzipped in a helper, never closed\n")
