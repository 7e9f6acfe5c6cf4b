"""Loading duft-config folders: the public fixtures as they are, and each kind of fault."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from duftd.config import Diagnostic, LoadedConfig, load_config
from duftd.errors import (
    AmbiguousTaskError,
    ConfigError,
    TaskNotRunnableError,
    UnknownTaskError,
)


def copy_config(fixtures_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(fixtures_dir, tmp_path / "duft-config"))


def add_scripts(root: Path, *names: str, app: str | None = None) -> None:
    folder = (root / "apps" / app if app else root / "system") / "data_tasks"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text("print('hello')\n")


def write_tasks(root: Path, tasks: list[Any], app: str | None = None) -> Path:
    path = (root / "apps" / app if app else root / "system") / "data_tasks.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"dataTasks": tasks}, indent=2))
    return path


def minimal(tmp_path: Path, tasks: list[Any], scripts: tuple[str, ...] = ()) -> LoadedConfig:
    root = tmp_path / "cfg"
    write_tasks(root, tasks)
    add_scripts(root, *scripts)
    return load_config(root)


def find(config: LoadedConfig, **match: Any) -> list[Diagnostic]:
    return [d for d in config.diagnostics if all(getattr(d, k) == v for k, v in match.items())]


def task(tid: str, python_file: str = "t.py", **extra: Any) -> dict[str, Any]:
    return {"id": tid, "name": tid, "pythonFile": python_file, **extra}


# -- the public fixtures, as published -------------------------------------------------


def test_fixtures_load_every_task_by_address(fixtures_dir: Path) -> None:
    """All 17 fixture tasks load; system ones by bare id, app ones as test:ID."""
    config = load_config(fixtures_dir)
    assert len(config.tasks) == 17
    assert config.tasks["SAMPLE"].app is None
    assert config.tasks["test:SAMPLE"].app == "test"
    assert config.tasks["test:SAMPLE"].address == "test:SAMPLE"
    assert config.tasks["SAMPLE-NOTEBOOK"].kind == "notebook"
    assert config.tasks["SAMPLE"].kind == "script"
    assert config.tasks["UPDATE"].execute_from_root is True
    assert config.tasks["SAMPLE"].hide_in_ui is True


def test_fixture_tasks_are_all_missing_their_script(fixtures_dir: Path) -> None:
    """The fixtures ship no scripts, so every task has one error naming the full expected path."""
    config = load_config(fixtures_dir)
    assert not any(t.runnable for t in config.tasks.values())
    assert len(config.errors) == 17
    nonexisting = config.tasks["NON-EXISTING"]
    expected = fixtures_dir / "system" / "data_tasks" / "does_not_exist.ipynb"
    assert nonexisting.problems == [
        f"pythonFile 'does_not_exist.ipynb' not found: expected {expected}"
    ]
    (error,) = find(config, severity="error", task_id="NON-EXISTING", file="system/data_tasks.json")
    assert error.field == "pythonFile" and error.line == 206


def test_fixture_quirks_are_warnings(fixtures_dir: Path) -> None:
    """Each quirk the fixtures README lists is reported as a precise warning."""
    config = load_config(fixtures_dir)
    undeclared = find(config, connection_id="MyOwnConnection", field="dataConnections")
    assert {(d.file, d.task_id) for d in undeclared} >= {
        ("system/data_tasks.json", "SAMPLE"),
        ("apps/test/data_tasks.json", "SAMPLE"),
    }
    for cid in ("UNITTEST", "POSTGRRESQL_TEST", "MYSQL_TEST", "EMPS"):
        (d,) = find(config, connection_id=cid, file="user/config.json")
        assert d.severity == "warning" and d.field == "dataConnectionParameters"
    assert "did you mean EPMS?" in find(config, connection_id="EMPS")[0].message
    (no_values,) = find(config, connection_id="EPMS", file="user/config.json")
    assert "resolves to {}" in no_values.message
    space = find(config, task_id="EPMS_ETL", field="pythonFile", severity="warning")
    assert len(space) == 2 and "space" in space[0].message
    (shared,) = find(config, file="apps/test/data_tasks.json", task_id="SAMPLE", field="id")
    assert "address this one as test:SAMPLE" in shared.message
    (gender,) = find(config, field="supportedParameters.gender")
    assert gender.task_id == "SAMPLE-PARAM-NOTEBOOK" and "no defaultValue" in gender.message


def test_fixture_known_fields_and_mixed_defaults_are_not_flagged(fixtures_dir: Path) -> None:
    """allowQueryEngine strings, mixed default types and extra user/config.json keys are fine."""
    config = load_config(fixtures_dir)
    assert not [d for d in config.diagnostics if "unknown" in d.message]
    assert not find(config, field="allowQueryEngine")
    param_fields = {d.field for d in config.diagnostics if (d.field or "").startswith("supp")}
    assert param_fields == {"supportedParameters.gender", "supportedParameters.sleep_time"}
    assert config.tasks["SAMPLE-ERROR"].supported_parameters["simulate_error"].default_value is True
    assert config.user.model_extra is not None and "djangoDatabases" in config.user.model_extra
    assert config.system_connections["ANA"].model_extra == {"allowQueryEngine": "True"}


def test_fixture_user_values_and_schedules_load(fixtures_dir: Path) -> None:
    """user/config.json values, schedules and settings load; SAMPLE's schedule is not flagged."""
    config = load_config(fixtures_dir)
    assert config.user.data_connection_parameters["ANA"]["type"] == "sqlite3"
    assert config.user.scheduled_data_tasks["SAMPLE"].schedule["cron"]["second"] == "*/30"
    assert config.user.settings["debug"] is True
    assert not find(config, file="user/config.json", task_id="SAMPLE")


def test_tasks_with_scripts_are_runnable(fixtures_dir: Path, tmp_path: Path) -> None:
    """Adding the scripts makes exactly those tasks runnable, with their script path."""
    root = copy_config(fixtures_dir, tmp_path)
    add_scripts(root, "sample_task.py", "sample_notebook.ipynb")
    config = load_config(root)
    runnable = {a for a, t in config.tasks.items() if t.runnable}
    assert runnable == {"SAMPLE", "SAMPLE-ERROR", "SAMPLE-NOTEBOOK"}
    spec = config.runnable_task("SAMPLE-NOTEBOOK")
    assert spec.script_path == root.resolve() / "system" / "data_tasks" / "sample_notebook.ipynb"
    assert spec.kind == "notebook"


# -- addressing ------------------------------------------------------------------------


def test_bare_id_means_system_task_and_qualified_means_app(fixtures_dir: Path) -> None:
    """SAMPLE is the system task and test:SAMPLE the app task of the same id."""
    config = load_config(fixtures_dir)
    assert config.task("SAMPLE").source_file.parent.name == "system"
    assert config.task("test:SAMPLE").source_file.parent.name == "test"


def test_bare_id_unique_to_one_app_resolves(tmp_path: Path) -> None:
    """A bare id that no system task has but one app has means that app task."""
    root = tmp_path / "cfg"
    write_tasks(root, [])
    write_tasks(root, [task("ONLY")], app="a")
    assert load_config(root).task("ONLY").address == "a:ONLY"


def test_bare_id_in_several_apps_is_ambiguous(tmp_path: Path) -> None:
    """A bare id found in two apps (and not system) is refused, listing qualified ids."""
    root = tmp_path / "cfg"
    write_tasks(root, [])
    write_tasks(root, [task("X")], app="a")
    write_tasks(root, [task("X")], app="b")
    config = load_config(root)
    with pytest.raises(AmbiguousTaskError, match="a:X, b:X") as info:
        config.task("X")
    assert info.value.code == "ambiguous_task"
    assert "is ambiguous" in find(config, file="apps/a/data_tasks.json", field="id")[0].message


def test_unknown_task_suggests_close_addresses(fixtures_dir: Path) -> None:
    """An unknown address is refused with close matches, including qualified ids."""
    config = load_config(fixtures_dir)
    with pytest.raises(UnknownTaskError, match="SAMPLE, test:SAMPLE") as info:
        config.task("sample")
    assert info.value.code == "unknown_task"
    with pytest.raises(UnknownTaskError):
        config.task("nope:SAMPLE")


def test_runnable_task_refuses_with_the_reason(fixtures_dir: Path) -> None:
    """runnable_task names the missing script's full path."""
    config = load_config(fixtures_dir)
    with pytest.raises(
        TaskNotRunnableError, match=re.escape("does_not_exist.ipynb' not found")
    ) as info:
        config.runnable_task("test:NON-EXISTING")
    assert str(fixtures_dir / "apps" / "test" / "data_tasks") in str(info.value)
    assert info.value.code == "task_not_runnable"


@pytest.mark.parametrize("bad_id", ["a/b", "a b", "a:b", "tab\there", ".."])
def test_ids_unfit_for_topics_are_errors(tmp_path: Path, bad_id: str) -> None:
    """A task id with '/', whitespace, ':', control chars or '..' cannot run."""
    config = minimal(tmp_path, [task(bad_id), task("OK")], scripts=("t.py",))
    (error,) = find(config, task_id=bad_id, field="id")
    assert error.severity == "error" and "topics" in error.message
    assert not config.tasks[bad_id].runnable
    assert config.tasks["OK"].runnable


# -- pythonFile ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("python_file", "expected"),
    [
        ("../x.py", "without folders"),
        ("sub/x.py", "without folders"),
        ("sub\\x.py", "without folders"),
        ("/abs/x.py", "not an absolute path"),
        ("C:\\x.py", "not an absolute path"),
        ("x.txt", "must end in .py or .ipynb"),
        ("x", "must end in .py or .ipynb"),
        ("..", "must be a bare file name"),
        ("", "pythonFile is empty"),
    ],
)
def test_python_file_must_be_a_bare_name(tmp_path: Path, python_file: str, expected: str) -> None:
    """A path, '..', an absolute path, an empty name or a wrong extension is refused."""
    config = minimal(tmp_path, [task("T", python_file), task("OK")], scripts=("t.py",))
    (error,) = find(config, task_id="T", field="pythonFile")
    assert error.severity == "error" and expected in error.message
    assert config.tasks["T"].problems == [error.message]
    assert config.tasks["OK"].runnable


def test_symlink_out_of_data_tasks_is_refused(tmp_path: Path) -> None:
    """A script that is a symlink to a file outside data_tasks/ cannot run."""
    outside = tmp_path / "elsewhere.py"
    outside.write_text("print(1)\n")
    root = tmp_path / "cfg"
    write_tasks(root, [task("T", "link.py")])
    add_scripts(root)
    (root / "system" / "data_tasks" / "link.py").symlink_to(outside)
    config = load_config(root)
    assert "outside" in config.tasks["T"].problems[0]


def test_symlink_inside_data_tasks_is_fine(tmp_path: Path) -> None:
    """A symlink to another script in the same folder is allowed."""
    root = tmp_path / "cfg"
    write_tasks(root, [task("T", "link.py")])
    add_scripts(root, "real.py")
    (root / "system" / "data_tasks" / "link.py").symlink_to("real.py")
    assert load_config(root).tasks["T"].runnable


def test_space_in_file_name_is_a_warning_only(tmp_path: Path) -> None:
    """A file name with a space runs, with a warning."""
    config = minimal(tmp_path, [task("T", "my task.py")], scripts=("my task.py",))
    assert config.tasks["T"].runnable
    assert find(config, task_id="T", field="pythonFile", severity="warning")


def test_folder_named_like_a_script_is_not_a_file(tmp_path: Path) -> None:
    """A directory called x.py is refused as not a file."""
    root = tmp_path / "cfg"
    write_tasks(root, [task("T", "x.py")])
    (root / "system" / "data_tasks" / "x.py").mkdir(parents=True)
    assert "is not a file" in load_config(root).tasks["T"].problems[0]


# -- file and structure faults ---------------------------------------------------------


def test_invalid_json_reports_line_and_column_and_the_rest_loads(
    fixtures_dir: Path, tmp_path: Path
) -> None:
    """Broken JSON in one file is an error at its line/column; other files still load."""
    root = copy_config(fixtures_dir, tmp_path)
    (root / "apps" / "test" / "data_tasks.json").write_text('{\n  "dataTasks": [\n    {"id": }\n')
    config = load_config(root)
    (error,) = find(config, file="apps/test/data_tasks.json")
    assert (error.severity, error.line, error.column) == ("error", 3, 12)
    assert "invalid JSON" in error.message
    assert "SAMPLE" in config.tasks and "test:SAMPLE" not in config.tasks


def test_invalid_user_config_keeps_tasks(fixtures_dir: Path, tmp_path: Path) -> None:
    """Broken user/config.json is one error; tasks still load, with no user values."""
    root = copy_config(fixtures_dir, tmp_path)
    (root / "user" / "config.json").write_text("{,}")
    config = load_config(root)
    (error,) = find(config, file="user/config.json", severity="error")
    assert error.line == 1 and error.column == 2
    assert len(config.tasks) == 17 and config.user.data_connection_parameters == {}


def test_data_tasks_not_a_list_is_an_error(tmp_path: Path) -> None:
    """dataTasks of the wrong type is an error naming the file and field."""
    root = tmp_path / "cfg"
    (root / "system").mkdir(parents=True)
    (root / "system" / "data_tasks.json").write_text('{"dataTasks": {"id": "X"}}')
    config = load_config(root)
    (error,) = config.errors
    assert error.field == "dataTasks" and "dataTasks is an object" in error.message


def test_entries_without_id_or_python_file_are_errors_others_load(tmp_path: Path) -> None:
    """A task without id is dropped, one without pythonFile is not runnable; others load."""
    tasks = [{"name": "no id", "pythonFile": "t.py"}, {"id": "NOFILE"}, "junk", task("OK")]
    config = minimal(tmp_path, tasks, scripts=("t.py",))
    assert set(config.tasks) == {"NOFILE", "OK"}
    assert find(config, field="id", severity="error")[0].message.startswith("dataTasks[0]")
    assert "pythonFile is missing" in config.tasks["NOFILE"].problems[0]
    assert find(config, field="dataTasks[2]", severity="error")
    assert config.tasks["OK"].runnable


def test_duplicate_id_in_one_file_keeps_the_first(tmp_path: Path) -> None:
    """The later of two entries with one id is an error naming both positions."""
    config = minimal(tmp_path, [task("D", "t.py"), task("D", "other.py")], scripts=("t.py",))
    assert config.tasks["D"].python_file == "t.py"
    (error,) = find(config, task_id="D", field="id")
    assert "dataTasks[1]" in error.message and "dataTasks[0] (line 3)" in error.message
    assert error.line == 8


def test_unknown_fields_are_kept_and_warned(tmp_path: Path) -> None:
    """Unknown task/parameter/connection fields load, stay on the model and are warned."""
    params = {"p": {"defaultValue": 1, "allowOverride": True, "colour": "red"}}
    config = minimal(
        tmp_path,
        [task("T", hideInUi=True, supportedParameters=params, owner="me")],
        scripts=("t.py",),
    )
    spec = config.tasks["T"]
    assert spec.runnable and spec.model_extra == {"hideInUi": True, "owner": "me"}
    assert spec.supported_parameters["p"].model_extra == {"colour": "red"}
    assert "did you mean hideInUI?" in find(config, field="hideInUi")[0].message
    assert find(config, field="supportedParameters.p.colour", severity="warning")


def test_unknown_connection_field_is_warned(tmp_path: Path) -> None:
    """An unknown connection field is a warning; known DUFT fields are not."""
    root = tmp_path / "cfg"
    write_tasks(root, [])
    conns = [{"id": "C", "type": "x", "allowQueryEngine": "False", "secretive": 1}]
    (root / "system" / "data_connections.json").write_text(json.dumps({"dataConnections": conns}))
    config = load_config(root)
    (warning,) = config.warnings
    assert (warning.connection_id, warning.field) == ("C", "secretive")


def test_string_flags_are_coerced_with_a_warning(tmp_path: Path) -> None:
    """hideInUI "True" and allowOverride "false" read as booleans, each with a warning."""
    params = {"p": {"defaultValue": 1, "allowOverride": "false"}}
    config = minimal(
        tmp_path, [task("T", hideInUI="True", supportedParameters=params)], scripts=("t.py",)
    )
    spec = config.tasks["T"]
    assert spec.hide_in_ui is True and spec.supported_parameters["p"].allow_override is False
    assert find(config, field="hideInUI", severity="warning")
    assert find(config, field="supportedParameters.p.allowOverride", severity="warning")
    assert spec.runnable


def test_duplicate_json_keys_are_warned(tmp_path: Path) -> None:
    """A key repeated in one object is a warning at that object's line; the later value wins."""
    root = tmp_path / "cfg"
    (root / "system").mkdir(parents=True)
    text = '{"dataTasks": [\n {"id": "T", "pythonFile": "a.py", "pythonFile": "t.py"}\n]}'
    (root / "system" / "data_tasks.json").write_text(text)
    add_scripts(root, "t.py")
    config = load_config(root)
    (warning,) = find(config, field="pythonFile", severity="warning")
    assert warning.line == 2 and "duplicate key" in warning.message
    assert config.tasks["T"].python_file == "t.py"


def test_positions_skip_braces_and_quotes_inside_strings(tmp_path: Path) -> None:
    """Each task's and parameter's diagnostic points at its own ``{`` (line and column),
    though strings before it hold braces, escaped quotes and backslashes, and one line
    holds several objects."""
    root = tmp_path / "cfg"
    (root / "system").mkdir(parents=True)
    lines = [
        '{"dataTasks": [',
        '  {"id": "A", "name": "{not an object} \\"}\\" \\\\", "pythonFile": "t.py", "x": 1},',
        '  {"id": "B", "pythonFile": "t.py", "description": "}}}{{{",',
        '   "supportedParameters": {"p": {"title": "{"}, "q":   {"bad": 1}}, "y": 2},',
        '{"id": "C", "pythonFile": "t.py", "z": 3}, {"id": "D", "pythonFile": "t.py", "w": 4}',
        "]}",
    ]
    (root / "system" / "data_tasks.json").write_text("\n".join(lines))
    add_scripts(root, "t.py")
    config = load_config(root)

    def at(field: str) -> tuple[int | None, int | None]:
        (found,) = find(config, field=field, severity="warning")
        return found.line, found.column

    def brace(line: int, starting: str) -> tuple[int, int]:
        return line, lines[line - 1].index(starting) + 1

    assert at("x") == brace(2, '{"id": "A"') == (2, 3)
    assert at("y") == brace(3, '{"id": "B"')
    assert at("supportedParameters.q.bad") == brace(4, '{"bad"')
    assert at("z") == brace(5, '{"id": "C"') == (5, 1)
    assert at("w") == brace(5, '{"id": "D"')
    assert config.tasks["A"].name == '{not an object} "}" \\'
    assert [t.source_line for t in config.tasks.values()] == [2, 3, 5, 5]


def test_bad_timeout_is_an_error_and_good_one_loads(tmp_path: Path) -> None:
    """timeoutSeconds must be a positive number; a valid one is kept as a float."""
    config = minimal(
        tmp_path,
        [task("A", timeoutSeconds=90), task("B", timeoutSeconds="soon")],
        scripts=("t.py",),
    )
    assert config.tasks["A"].timeout_seconds == 90.0
    assert not config.tasks["B"].runnable
    assert find(config, task_id="B", field="timeoutSeconds", severity="error")


def test_resources_are_checked_at_load(tmp_path: Path) -> None:
    """resources (Dask resources a run needs) load as positive amounts by name; a
    non-object, a bad amount or a bad name makes the task not runnable, named by field."""
    config = minimal(
        tmp_path,
        [
            task("A", resources={"memory_gb": 8, "GPU": 1}),
            task("B", resources=[8]),
            task("C", resources={"memory_gb": -1}),
            task("D", resources={"memory_gb": True}),
            task("E", resources={"my gpu": 1}),
        ],
        scripts=("t.py",),
    )
    assert config.tasks["A"].resources == {"memory_gb": 8.0, "GPU": 1.0}
    assert config.tasks["A"].runnable
    for tid, field in [
        ("B", "resources"),
        ("C", "resources.memory_gb"),
        ("D", "resources.memory_gb"),
        ("E", "resources"),
    ]:
        assert not config.tasks[tid].runnable, tid
        (error,) = find(config, task_id=tid, field=field, severity="error")
        assert "resource" in error.message
    assert "positive number, found -1" in find(config, task_id="C")[0].message
    assert "contains a space" in find(config, task_id="E")[0].message


def test_missing_optional_files_are_fine(tmp_path: Path) -> None:
    """No data_connections.json and no user/config.json load silently as empty."""
    config = minimal(tmp_path, [task("T")], scripts=("t.py",))
    assert config.diagnostics == []
    assert config.system_connections == {} and config.user.data_connection_parameters == {}


def test_missing_system_data_tasks_is_an_error(tmp_path: Path) -> None:
    """A system/ folder without data_tasks.json loads with an error, app tasks still load."""
    root = tmp_path / "cfg"
    (root / "system").mkdir(parents=True)
    write_tasks(root, [task("A")], app="x")
    config = load_config(root)
    assert config.errors[0].file == "system/data_tasks.json"
    assert "x:A" in config.tasks


def test_not_a_config_folder_raises(tmp_path: Path) -> None:
    """Only a missing folder or a folder without system/ raises ConfigError."""
    with pytest.raises(ConfigError, match="not a folder") as info:
        load_config(tmp_path / "absent")
    assert info.value.code == "bad_config"
    with pytest.raises(ConfigError, match="no system/ folder"):
        load_config(tmp_path)


def test_schedule_for_unknown_task_is_warned(tmp_path: Path) -> None:
    """A scheduledDataTasks entry naming no task is a warning on user/config.json."""
    root = tmp_path / "cfg"
    write_tasks(root, [task("T")])
    (root / "user").mkdir()
    user = {"scheduledDataTasks": {"GHOST": {"schedule": {"cron": {"minute": "*"}}}}}
    (root / "user" / "config.json").write_text(json.dumps(user))
    (warning,) = find(load_config(root), task_id="GHOST")
    assert warning.file == "user/config.json" and warning.field == "scheduledDataTasks.GHOST"


def test_app_connections_override_system_ones(fixtures_dir: Path) -> None:
    """connections_for merges system and app connections, the app's winning on an id."""
    config = load_config(fixtures_dir)
    app_conns = config.connections_for(config.task("test:SAMPLE"))
    assert app_conns["ANA"].app == "test" and app_conns["ANA"].testquery is None
    assert "HTTPBIN" in app_conns
    assert config.connections_for(config.task("SAMPLE"))["ANA"].testquery is not None
    assert config.system_connections["ANA"].password_fields == {"password"}


def test_diagnostic_text_and_dict() -> None:
    """A diagnostic renders as one line file:line:col: task: field: message, and as a dict."""
    d = Diagnostic("error", "system/data_tasks.json", "boom", task_id="S", field="pythonFile")
    assert str(d) == "system/data_tasks.json: task S: field pythonFile: boom"
    located = Diagnostic("warning", "user/config.json", "x", connection_id="C", line=3, column=4)
    assert str(located) == "user/config.json:3:4: connection C: x"
    assert d.to_dict()["severity"] == "error" and d.to_dict()["line"] is None


def test_runnable_task_looks_at_the_script_again(tmp_path: Path) -> None:
    """A script written after loading makes the task runnable; one deleted refuses it."""
    root = tmp_path / "cfg"
    write_tasks(root, [task("NEW", "new.py"), task("OLD", "t.py")])
    add_scripts(root, "t.py")
    config = load_config(root)
    assert not config.tasks["NEW"].runnable
    add_scripts(root, "new.py")
    assert config.runnable_task("NEW").problems == []
    (root / "system" / "data_tasks" / "t.py").unlink()
    with pytest.raises(TaskNotRunnableError, match=re.escape("'t.py' not found")):
        config.runnable_task("OLD")
    assert config.tasks["OLD"].runnable  # the loaded config itself is not changed


def test_runnable_task_keeps_other_problems(tmp_path: Path) -> None:
    """Writing the script does not clear a task's other problems (e.g. a bad timeout)."""
    config = minimal(tmp_path, [task("T", "late.py", timeoutSeconds=-1)])
    add_scripts(tmp_path / "cfg", "late.py")
    with pytest.raises(TaskNotRunnableError, match="timeoutSeconds") as info:
        config.runnable_task("T")
    assert "not found" not in str(info.value)
