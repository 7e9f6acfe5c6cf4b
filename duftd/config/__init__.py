"""duft-config: the model, loading with diagnostics, and parameter/connection resolution.

Pure code (no event loop, no sockets), shared by the daemon, the CLI and standalone runs.
"""

from duftd.config.loader import load_config
from duftd.config.model import (
    ConnectionParam,
    ConnectionSpec,
    Diagnostic,
    LoadedConfig,
    ParameterSpec,
    ScheduledTask,
    TaskSpec,
    UserConfig,
)
from duftd.config.resolve import (
    ResolvedParameters,
    resolve_connection,
    resolve_connections,
    resolve_parameters,
    secret_values,
    strict_connections,
)

__all__ = [
    "ConnectionParam",
    "ConnectionSpec",
    "Diagnostic",
    "LoadedConfig",
    "ParameterSpec",
    "ResolvedParameters",
    "ScheduledTask",
    "TaskSpec",
    "UserConfig",
    "load_config",
    "resolve_connection",
    "resolve_connections",
    "resolve_parameters",
    "secret_values",
    "strict_connections",
]
