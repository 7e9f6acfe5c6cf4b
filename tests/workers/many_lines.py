"""Logs 2000 numbered lines as fast as it can and exits at once after the last."""

from dte_tools import initialise_data_task

environment = initialise_data_task("many lines")
for number in range(1, 2001):
    environment.log_message(f"line {number}")
