"""Does everything wrong with the ANA password: logs it, prints it, puts it in progress
and in an exception. duftd must mask every copy."""

import sys

from dte_tools import get_resolved_parameters_for_connection, initialise_data_task

environment = initialise_data_task("leaks")
password = get_resolved_parameters_for_connection("ANA")["password"]
environment.log_message(f"connecting with password {password}")
environment.log_error(f"login refused for password={password}")
environment.report_progress(1, 2, f"tried {password}")
print(f"stdout has {password}")
print(f"stderr has {password}", file=sys.stderr)
raise RuntimeError(f"cannot connect with {password}")
