"""Sample Data Task: logs a few steps with progress, to try out the engine.

Run it standalone (no daemon) from any folder:

    python sample_task.py '{"name": "Arya", "steps": 3, "sleep_time": 0}'
"""

import sys
import time

import data_task_helpers as helpers

from services.dte_tools.data_task_tools import (
    assert_dte_tools_available,
    find_json_arg,
    get_resolved_parameters_for_connection,
    initialise_data_task,
)

params = find_json_arg(sys.argv)
environment = initialise_data_task("Sample Data Task", params=params)

# Defaults for running outside the engine; data_tasks.json supplies them under duftd.
name = params.get("name", "Daenerys")
sleep_time = float(params.get("sleep_time", 0.2))
steps = int(params.get("steps", 10))
simulate_error = helpers.as_bool(params.get("simulate_error", False))


def sample_task():
    """Log the connection it would use, then count through the steps."""
    ana = get_resolved_parameters_for_connection("ANA")
    environment.log_message(f"Script starting for {name}!")
    environment.log_message(f"Would use the ANA connection: {helpers.describe_connection(ana)}")
    print(f"Hello from print(), {name}: stdout is captured too.")

    for i in range(1, steps + 1):
        environment.log_message(f"{name}: step {i} of {steps}")
        environment.report_progress(i, steps, f"step {i}")
        if simulate_error and i == max(1, steps // 2):
            environment.log_error(f"Simulated error at step {i} (simulate_error is true)")
            raise RuntimeError(f"simulated error at step {i}")
        time.sleep(sleep_time)

    environment.log_message(f"Sample Data Task completed for {name}.")


assert_dte_tools_available()
sample_task()
