"""What a run receives: its parameters and its connections' user values.

Pure functions over a loaded config, shared by the daemon and by standalone runs so a
task sees the same values either way. Decisions where DESIGN.md is silent:

- A given value must have the JSON type of the parameter's default (int and float are
  one "number"; bool is not a number). A ``null`` default or no default accepts any
  JSON value. All type mismatches are reported in one :class:`ParameterError`.
- Values are deep copies, so a run cannot change the loaded config.
- A connection the task does not declare is handed over, as DUFT does (the daemon warns
  on the run), unless the operator asked for strict connections; an id that no
  data_connections.json declares and that has no user values is refused either way.
- ``secret_values`` covers every connection a worker could fetch (all with user values,
  since undeclared ones are handed over too): password-type params plus any value whose
  key looks secret. Numbers count (as text), since a numeric password is still a password.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dte_tools import redact
from duftd.config.model import LoadedConfig, TaskSpec
from duftd.errors import ParameterError, UnknownConnectionError


@dataclass(frozen=True)
class ResolvedParameters:
    """The parameters passed to a run, why each refused caller value was dropped, and
    (standalone only) the values of another type that were kept anyway."""

    values: dict[str, Any] = field(default_factory=dict)
    ignored: dict[str, str] = field(default_factory=dict)
    mismatched: list[str] = field(default_factory=list)


def parameter_kind(value: Any) -> str:
    """The JSON type a parameter value has (``number`` for int and float), which a given
    value must share with the default; raises ``TypeError`` for non-JSON values."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def resolve_parameters(
    task: TaskSpec, given: Mapping[str, Any], refuse_mismatches: bool = True
) -> ResolvedParameters:
    """Defaults, replaced by ``given`` values only where ``allowOverride`` is true.

    Values of another JSON type are refused (:class:`ParameterError`, all named at once),
    unless ``refuse_mismatches`` is false: a standalone run keeps them and says what duftd
    would refuse, since an author trying a script by hand types text for numbers.
    """
    specs = task.supported_parameters
    values = {name: copy.deepcopy(p.default_value) for name, p in specs.items() if p.has_default}
    ignored: dict[str, str] = {}
    mismatches: list[str] = []
    for key, value in given.items():
        if not isinstance(key, str):
            raise ParameterError(f"parameter names must be strings, got {key!r}")
        spec = specs.get(key)
        if spec is None:
            ignored[key] = f"not a parameter of {task.address}"
            continue
        if not spec.allow_override:
            ignored[key] = "not overridable (allowOverride is false)"
            continue
        mismatch = _type_mismatch(key, value, spec.default_value if spec.has_default else None)
        if mismatch is not None:
            mismatches.append(mismatch)
            if refuse_mismatches:
                continue
        values[key] = copy.deepcopy(value)
    if mismatches and refuse_mismatches:
        raise ParameterError(f"bad parameters for task {task.address}: " + "; ".join(mismatches))
    return ResolvedParameters(values=values, ignored=ignored, mismatched=mismatches)


def _type_mismatch(key: str, value: Any, default: Any) -> str | None:
    """Why ``value`` cannot stand for a parameter whose default is ``default``, if it cannot."""
    try:
        got = parameter_kind(value)
    except TypeError as exc:
        return f"{key!r}: {exc}"
    if default is None:
        return None
    expected = parameter_kind(default)
    if got == expected:
        return None
    return (
        f"{key!r} expects a {expected} (like its default {json.dumps(default)}), "
        f"got {got} {json.dumps(value)}"
    )


def resolve_connections(config: LoadedConfig, task: TaskSpec) -> dict[str, dict[str, Any]]:
    """Every connection id the task declares -> a copy of its user values (``{}`` if none)."""
    values = config.user.data_connection_parameters
    return {cid: copy.deepcopy(values.get(cid, {})) for cid in task.data_connections}


STRICT_CONNECTIONS_SETTING = "strictConnections"  # in user/config.json's "settings"


def strict_connections(config: LoadedConfig) -> bool:
    """Whether the config asks that tasks get only the connections they declare."""
    return config.user.settings.get(STRICT_CONNECTIONS_SETTING) is True


def resolve_connection(
    config: LoadedConfig, task: TaskSpec, connection_id: str, strict: bool = True
) -> dict[str, Any]:
    """One connection's user values (``{}`` when none). ``strict`` refuses an id the task
    does not declare; otherwise any known connection is handed over, as DUFT does."""
    values = config.user.data_connection_parameters
    if connection_id not in task.data_connections:
        declared = ", ".join(task.data_connections) or "none"
        if strict:
            raise UnknownConnectionError(
                f"task {task.address} does not declare connection {connection_id!r} "
                f"(its dataConnections: {declared}); add it to dataConnections in "
                f"{task.source_file}"
            )
        if connection_id not in config.connections_for(task) and connection_id not in values:
            raise UnknownConnectionError(
                f"no connection {connection_id!r}: no data_connections.json declares it and "
                f"user/config.json has no values for it (task {task.address} declares: "
                f"{declared})"
            )
    return copy.deepcopy(values.get(connection_id, {}))


def secret_values(config: LoadedConfig, task: TaskSpec) -> tuple[str, ...]:
    """Values to mask in the task's logs, longest first (so no secret is half-masked)."""
    # They depend on the task's app and declared connections only (and the config, which
    # a reload replaces whole): worked out once for all tasks alike, not at each submit.
    key = (task.app, tuple(task.data_connections))
    found = config.secrets_by_scope.get(key)
    if found is not None:
        return found
    specs = config.connections_for(task)
    secrets: set[str] = set()
    fetchable = {**config.user.data_connection_parameters, **resolve_connections(config, task)}
    for cid, values in fetchable.items():
        spec = specs.get(cid)
        secrets |= redact.secret_values(values, spec.password_fields if spec else ())
    found = config.secrets_by_scope[key] = tuple(sorted(secrets, key=lambda s: (-len(s), s)))
    return found
