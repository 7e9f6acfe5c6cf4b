"""Ends without tidying up: files, a zip and a temporary file left open in its globals, a
gzip file left open in a helper module, an atexit handler and a thread that log after
the script's last line. What the interpreter's exit would do with them must happen."""

import atexit
import tempfile
import threading
import zipfile

import left_open_elsewhere
import worker_kit

from dte_tools import initialise_data_task

environment = initialise_data_task("leaves things open")
folder = worker_kit.MEET / f"left-{worker_kit.RUN_ID}"
folder.mkdir(parents=True)

text = open(folder / "text.txt", "w", encoding="utf-8")  # noqa: SIM115 - never closed
text.write("written, never closed\n")
raw = open(folder / "raw.bin", "wb")  # noqa: SIM115 - never closed
raw.write(b"bytes, never closed")
archive = zipfile.ZipFile(folder / "archive.zip", "w")
archive.writestr("inside.txt", "zipped, never closed")
scratch = tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp")  # noqa: SIM115 - never closed
left_open_elsewhere.start(folder / "helper.txt.gz")


def after_main() -> None:
    """Logs once the main thread is done with the script (its join returns then)."""
    threading.main_thread().join(timeout=worker_kit.GATE_TIMEOUT_S)
    environment.log_message("thread after the script")


threading.Thread(target=after_main).start()
atexit.register(environment.log_message, "atexit handler")
worker_kit.note("left", {"scratch": scratch.name})
environment.log_message("script done")
