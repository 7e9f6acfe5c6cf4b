"""Logs numbers 1-150, waits for the gate (notes "half"), then logs 151-300 in a burst."""

import worker_kit

from dte_tools import initialise_data_task

environment = initialise_data_task("numbered")
for number in range(1, 301):
    if number == 151:
        worker_kit.note("half", {})
        worker_kit.wait_gate()
    environment.log_message(f"number {number}")
