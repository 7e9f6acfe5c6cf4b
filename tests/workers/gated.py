"""Notes that it started, waits for the test's gate, then logs the ANA connection's file."""

import os

import worker_kit

from dte_tools import get_resolved_parameters_for_connection, initialise_data_task

environment = initialise_data_task("gated")
environment.log_message("waiting for the gate")
# The token too: a worker started on a warm spare got it after start, so /proc does not show it.
worker_kit.note("ready", {"pid": os.getpid(), "token": os.environ["DUFT_RUN_TOKEN"]})
worker_kit.wait_gate()
ana = get_resolved_parameters_for_connection("ANA")
environment.log_message(f"ANA file: {ana.get('sqlite3file')}")
