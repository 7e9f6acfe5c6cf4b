"""Notes its working folder, environment and arguments, and whether its helpers import."""

import os
import sys
from pathlib import Path

import data_task_helpers
import worker_kit

worker_kit.note(
    "env",
    {
        "cwd": str(Path.cwd()),
        "environ": dict(os.environ),
        "argv": sys.argv,
        "helpers": data_task_helpers.__file__,
        "helpers_work": data_task_helpers.as_bool("yes"),
    },
)
