"""Parameter and connection resolution: what a run is given, and what is refused."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from clients.cli.assignments import AssignmentError, parse_cli_assignments, parse_cli_value
from duftd.config import (
    LoadedConfig,
    load_config,
    resolve_connection,
    resolve_connections,
    resolve_parameters,
    secret_values,
)
from duftd.errors import ParameterError, UnknownConnectionError


def param(default: Any = ..., allow: bool = True) -> dict[str, Any]:
    spec: dict[str, Any] = {"title": "p", "allowOverride": allow}
    if default is not ...:
        spec["defaultValue"] = default
    return spec


def config_with(tmp_path: Path, params: dict[str, Any], **user: Any) -> LoadedConfig:
    root = tmp_path / "cfg"
    (root / "system" / "data_tasks").mkdir(parents=True)
    (root / "system" / "data_tasks" / "t.py").write_text("")
    entry = {"id": "T", "pythonFile": "t.py", "supportedParameters": params}
    entry["dataConnections"] = ["DB", "API", "BARE"]
    (root / "system" / "data_tasks.json").write_text(json.dumps({"dataTasks": [entry]}))
    conns = [
        {"id": "DB", "params": [{"name": "pw", "type": "password"}, {"name": "host"}]},
        {"id": "API", "params": [{"name": "user", "type": "text"}]},
        {"id": "BARE"},
    ]
    (root / "system" / "data_connections.json").write_text(json.dumps({"dataConnections": conns}))
    (root / "user").mkdir()
    (root / "user" / "config.json").write_text(json.dumps(user))
    return load_config(root)


# -- parameters ------------------------------------------------------------------------


def test_defaults_are_the_starting_point(fixtures_dir: Path) -> None:
    """With nothing given, every defaultValue is passed and nothing is ignored."""
    spec = load_config(fixtures_dir).task("SAMPLE-ERROR")
    resolved = resolve_parameters(spec, {})
    assert resolved.values == {"name": "Daenerys", "sleep_time": 0.2, "simulate_error": True}
    assert resolved.ignored == {}


def test_only_overridable_values_replace_defaults(fixtures_dir: Path) -> None:
    """A given value replaces its default only where allowOverride is true."""
    spec = load_config(fixtures_dir).task("SAMPLE")
    resolved = resolve_parameters(spec, {"name": "Arya", "sleep_time": 5})
    assert resolved.values == {"name": "Arya", "sleep_time": 0.2}
    assert resolved.ignored == {"sleep_time": "not overridable (allowOverride is false)"}


def test_unknown_values_are_ignored_with_a_reason(fixtures_dir: Path) -> None:
    """A key the task does not declare is not passed on; the reason names the task."""
    spec = load_config(fixtures_dir).task("test:SAMPLE")
    resolved = resolve_parameters(spec, {"colour": "red"})
    assert "colour" not in resolved.values
    assert resolved.ignored == {"colour": "not a parameter of test:SAMPLE"}


def test_parameter_without_default_is_absent_unless_given(fixtures_dir: Path) -> None:
    """SAMPLE-PARAM-NOTEBOOK's gender is absent by default and passed when given."""
    spec = load_config(fixtures_dir).task("SAMPLE-PARAM-NOTEBOOK")
    assert resolve_parameters(spec, {}).values == {}
    assert resolve_parameters(spec, {"gender": "f"}).values == {"gender": "f"}
    assert resolve_parameters(spec, {"gender": 3}).values == {"gender": 3}


def test_no_default_and_not_overridable_is_never_passed(tmp_path: Path) -> None:
    """A parameter with neither default nor override never reaches the task."""
    spec = config_with(tmp_path, {"p": param(allow=False)}).task("T")
    resolved = resolve_parameters(spec, {"p": 1})
    assert resolved.values == {} and "p" in resolved.ignored


@pytest.mark.parametrize(
    ("default", "given"),
    [(1, 2.5), (0.5, 3), ("a", "b"), (True, False), ([1], []), ({"a": 1}, {}), (None, "x")],
)
def test_same_json_type_is_accepted(tmp_path: Path, default: Any, given: Any) -> None:
    """Values of the default's JSON type (int and float alike, null accepts any) pass."""
    spec = config_with(tmp_path, {"p": param(default)}).task("T")
    assert resolve_parameters(spec, {"p": given}).values == {"p": given}


@pytest.mark.parametrize(
    ("default", "given", "expected"),
    [(1, True, "number"), (True, 1, "boolean"), (0.5, "0.5", "number"), ("a", None, "string")],
)
def test_other_json_types_are_refused(
    tmp_path: Path, default: Any, given: Any, expected: str
) -> None:
    """A value of another JSON type (bool is not a number) is refused naming param, type, value."""
    spec = config_with(tmp_path, {"p": param(default)}).task("T")
    with pytest.raises(ParameterError, match=f"'p' expects a {expected}") as info:
        resolve_parameters(spec, {"p": given})
    assert json.dumps(given) in str(info.value) and info.value.code == "bad_parameter"


def test_all_type_errors_are_reported_together(tmp_path: Path) -> None:
    """Several mismatches are named in one error."""
    spec = config_with(tmp_path, {"a": param(1), "b": param("x")}).task("T")
    with pytest.raises(ParameterError, match=r"'a' expects.*'b' expects"):
        resolve_parameters(spec, {"a": "1", "b": 2})


def test_resolved_values_are_copies(tmp_path: Path) -> None:
    """Changing resolved values does not change the loaded defaults."""
    spec = config_with(tmp_path, {"p": param([1, 2])}).task("T")
    resolve_parameters(spec, {}).values["p"].append(3)
    assert spec.supported_parameters["p"].default_value == [1, 2]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0.5", 0.5),
        ("3", 3),
        ("true", True),
        ('"x"', "x"),
        ("[1]", [1]),
        ("null", None),
        ("hello world", "hello world"),
        ("NaN", "NaN"),
        ("", ""),
    ],
)
def test_cli_values_parse_as_json_else_text(text: str, value: Any) -> None:
    """A CLI value is JSON where it parses (not NaN/Infinity), otherwise the raw string."""
    assert parse_cli_value(text) == value


def test_cli_assignments() -> None:
    """NAME=VALUE items become a dict; the value may contain '=' and spaces."""
    assert parse_cli_assignments(["a=1", "b=x y", "c=k=v", "a=2"]) == {
        "a": 2,
        "b": "x y",
        "c": "k=v",
    }


@pytest.mark.parametrize("item", ["novalue", "=1"])
def test_cli_assignment_without_name_is_refused(item: str) -> None:
    """An item that is not NAME=VALUE is refused, naming it."""
    with pytest.raises(AssignmentError, match=repr(item)):
        parse_cli_assignments(["ok=1", item])


# -- connections -----------------------------------------------------------------------


def test_declared_connections_resolve_to_user_values_or_empty(fixtures_dir: Path) -> None:
    """Each declared connection gets its user values; one without values gets {}."""
    config = load_config(fixtures_dir)
    resolved = resolve_connections(config, config.task("SAMPLE"))
    assert set(resolved) == {"ANA", "MyOwnConnection"}
    assert resolved["ANA"]["database"] == "analysis" and resolved["MyOwnConnection"] == {}
    assert resolve_connection(config, config.task("EPMS_ETL"), "EPMS") == {}


def test_connection_values_are_copies(fixtures_dir: Path) -> None:
    """Changing a resolved connection does not change the loaded user values."""
    config = load_config(fixtures_dir)
    resolve_connection(config, config.task("SAMPLE"), "ANA")["server"] = "evil"
    assert config.user.data_connection_parameters["ANA"]["server"] == "127.0.0.1"


def test_undeclared_connection_is_refused_when_strict(fixtures_dir: Path) -> None:
    """Strict, a task may not fetch a connection it does not declare, even one with values."""
    config = load_config(fixtures_dir)
    with pytest.raises(UnknownConnectionError, match="ANA, MyOwnConnection") as info:
        resolve_connection(config, config.task("SAMPLE"), "NDR")
    assert "SAMPLE" in str(info.value) and info.value.code == "unknown_connection"


def test_secret_values_cover_passwords_of_every_connection(tmp_path: Path) -> None:
    """Password-type params and secret-looking keys are secrets, in every connection with
    values (an undeclared one can be handed over); other values are not."""
    values = {
        "DB": {"pw": "hunter2", "host": "db.local", "api_key": "k-123"},
        "API": {"user": "alice", "Token": 98765, "note": ""},
        "BARE": {"password": ""},
        "OTHER": {"password": "not-this-task"},
    }
    config = config_with(tmp_path, {}, dataConnectionParameters=values)
    assert secret_values(config, config.task("T")) == (
        "not-this-task",
        "hunter2",
        "98765",
        "k-123",
    )


def test_secret_values_follow_each_tasks_app_and_connections(tmp_path: Path) -> None:
    """A password field an app's connection declares is a secret for that app's tasks only,
    whichever task asks first and however often."""
    values = {"DB": {"pw": "hunter2"}, "LAB": {"pin": "98765432"}}
    config_with(tmp_path, {}, dataConnectionParameters=values)
    app = tmp_path / "cfg" / "apps" / "lab"
    (app / "data_tasks").mkdir(parents=True)
    (app / "data_tasks" / "u.py").write_text("")
    entry = {"id": "U", "pythonFile": "u.py", "dataConnections": ["LAB"]}
    (app / "data_tasks.json").write_text(json.dumps({"dataTasks": [entry]}))
    lab = {"id": "LAB", "params": [{"name": "pin", "type": "password"}]}
    (app / "data_connections.json").write_text(json.dumps({"dataConnections": [lab]}))
    config = load_config(tmp_path / "cfg")
    system, in_app = config.task("T"), config.task("lab:U")
    for _ in range(2):
        assert secret_values(config, system) == ("hunter2",)
        assert secret_values(config, in_app) == ("98765432", "hunter2")


def test_fixture_secrets(fixtures_dir: Path) -> None:
    """For UPLOAD the ANA and DUFT-SERVER-API passwords are secrets, and so are the other
    connections' (it could be handed them), longest first."""
    config = load_config(fixtures_dir)
    secrets = secret_values(config, config.task("UPLOAD"))
    assert {"mysecretword", "--------", "Namibia23"} <= set(secrets)
    assert list(secrets) == sorted(secrets, key=lambda s: (-len(s), s))


def test_undeclared_connection_is_handed_over_unless_strict(fixtures_dir: Path) -> None:
    """Not strict (DUFT's way), an undeclared connection with values or a declaration is
    handed over; an id known nowhere is still refused, naming what was looked at."""
    config = load_config(fixtures_dir)
    task = config.task("SAMPLE")
    assert resolve_connection(config, task, "NDR", strict=False) == copy.deepcopy(
        config.user.data_connection_parameters["NDR"]
    )
    with pytest.raises(UnknownConnectionError, match=r"no data_connections\.json declares it"):
        resolve_connection(config, task, "NO-SUCH-CONNECTION", strict=False)
