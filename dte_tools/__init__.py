"""Data Task Tools: what a DUFT data task imports to get its parameters and connections
and to report log lines and progress, under duftd or standalone.

Importing this package loads only the standard library (pyzmq is loaded on first use
under the daemon), so a task starts as fast as bare Python.
"""

from dte_tools.task import (
    DataTaskEnvironment,
    assert_dte_tools_available,
    find_json_arg,
    get_data_dir,
    get_resolved_parameters_for_connection,
    get_temp_dir,
    initialise_data_task,
    purge_temp_dir,
)
from dte_tools.upload import post_file_to_duft_server

__all__ = [
    "DataTaskEnvironment",
    "assert_dte_tools_available",
    "find_json_arg",
    "get_data_dir",
    "get_resolved_parameters_for_connection",
    "get_temp_dir",
    "initialise_data_task",
    "post_file_to_duft_server",
    "purge_temp_dir",
]
