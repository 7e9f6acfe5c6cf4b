"""Logs a line, then dies of an uncaught exception raised two calls deep."""

from dte_tools import initialise_data_task

environment = initialise_data_task("raises")
environment.log_message("loading visits")


def parse(row: int) -> None:
    raise ValueError(f"bad row {row} in visits")


def load_visits() -> None:
    parse(42)


load_visits()
