"""dte_tools as task code sees it: light imports, DUFT's import paths, standalone answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.harness import REPO, environment_without_duft


def _python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=environment_without_duft(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_import_loads_only_the_standard_library(tmp_path: Path) -> None:
    """`import dte_tools` loads nothing beyond the standard library (not even pyzmq yet)."""
    code = (
        "import sys, json; before = set(sys.modules); import dte_tools; "
        "new = [m for m in set(sys.modules) - before "
        "if m.split('.')[0] not in sys.stdlib_module_names]; print(json.dumps(sorted(new)))"
    )
    result = _python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded and all(name.split(".")[0] == "dte_tools" for name in loaded), loaded


def test_duft_import_paths_resolve_to_dte_tools(tmp_path: Path) -> None:
    """DUFT's historical imports give dte_tools' own functions and folder rules."""
    data = tmp_path / "data"
    code = (
        "import dte_tools\n"
        "from services.dte_tools.data_task_tools import (assert_dte_tools_available,\n"
        "    get_resolved_parameters_for_connection, initialise_data_task, find_json_arg,\n"
        "    DataTaskEnvironment, get_temp_dir, get_data_dir)\n"
        "from services.config.service.config_directories import directories\n"
        "assert initialise_data_task is dte_tools.initialise_data_task\n"
        "assert DataTaskEnvironment is dte_tools.DataTaskEnvironment\n"
        "print(directories.data_directory)\n"
        "print(directories.data_tasks_temp_directory)\n"
    )
    result = _python(
        code, tmp_path, DUFT_CONFIG_DIR=str(REPO / "duft-config"), DUFT_DATA_DIR=str(data)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(data), str(data / "temp")]
    assert (data / "temp").is_dir()


def test_a_users_own_services_package_is_not_shadowed(tmp_path: Path) -> None:
    """A project with its own regular `services` package still imports its modules."""
    package = tmp_path / "services"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "billing.py").write_text("NAME = 'users own'\n")
    result = _python("import services.billing as b; print(b.NAME)", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "users own"


def test_standalone_without_a_config_folder_says_what_to_do(tmp_path: Path) -> None:
    """Outside any duft-config folder, the tools fail naming DUFT_CONFIG_DIR as the fix."""
    result = _python("import dte_tools; dte_tools.assert_dte_tools_available()", tmp_path)
    assert result.returncode != 0
    assert "no duft-config folder found" in result.stderr
    assert "DUFT_CONFIG_DIR" in result.stderr


def test_find_json_arg_takes_the_first_json_object_argument(tmp_path: Path) -> None:
    """Standalone, find_json_arg returns the first argument that is a JSON object, else {}."""
    code = (
        "import json, dte_tools\n"
        "print(json.dumps([dte_tools.find_json_arg(['x', '--flag', '[1]', '{\"a\": 1}', '{}']),\n"
        "                  dte_tools.find_json_arg(['x'])]))\n"
    )
    result = _python(code, tmp_path, DUFT_CONFIG_DIR=str(REPO / "duft-config"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [{"a": 1}, {}]


def _config_with_task(root: Path, script: str) -> Path:
    """A duft-config whose task T runs ``script``: parameters of each kind, one fixed, and
    a connection whose password the user has set."""
    (root / "system" / "data_tasks").mkdir(parents=True)
    (root / "user").mkdir()
    params = {
        "steps": {"defaultValue": 3, "allowOverride": True},
        "label": {"defaultValue": "default label", "allowOverride": True},
        "fixed": {"defaultValue": "kept", "allowOverride": False},
    }
    task = {"id": "T", "name": "T", "pythonFile": "t.py", "dataConnections": ["DB"]}
    tasks = {"dataTasks": [{**task, "supportedParameters": params}]}
    (root / "system" / "data_tasks.json").write_text(json.dumps(tasks))
    connection = {"id": "DB", "name": "DB", "params": [{"name": "pw", "type": "password"}]}
    (root / "system" / "data_connections.json").write_text(
        json.dumps({"dataConnections": [connection]})
    )
    values = {"dataConnectionParameters": {"DB": {"pw": "zq-unguessable-719"}}}
    (root / "user" / "config.json").write_text(json.dumps(values))
    path = root / "system" / "data_tasks" / "t.py"
    path.write_text(script)
    return path


def test_standalone_resolves_parameters_as_duftd_does(tmp_path: Path) -> None:
    """A script declared by a task gets duftd's resolution standalone: defaults filled in,
    a fixed parameter kept, a value of another type kept with a warning that duftd would
    refuse it, and the connection's password masked in printed lines."""
    script = _config_with_task(
        tmp_path / "duft-config",
        "import json, sys, dte_tools\n"
        "params = dte_tools.find_json_arg(sys.argv)\n"
        "print(json.dumps(params, sort_keys=True))\n"
        "env = dte_tools.initialise_data_task('T', params)\n"
        "pw = dte_tools.get_resolved_parameters_for_connection('DB')['pw']\n"
        "env.log_message('connecting with ' + pw)\n",
    )
    given = json.dumps({"label": "mine", "fixed": "changed", "steps": "2"})
    result = subprocess.run(
        [sys.executable, str(script), given],
        cwd=tmp_path,
        env=environment_without_duft(),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    printed = result.stdout.splitlines()
    params = [json.loads(line) for line in printed if line.startswith("{")]
    assert params == [{"fixed": "kept", "label": "mine", "steps": "2"}]
    warnings = [line for line in printed if " WARNING " in line]
    assert any("'fixed' ignored: not overridable" in line for line in warnings), printed
    assert any(
        "'steps' expects a number" in line and "duftd would refuse" in line for line in warnings
    ), printed
    assert any(line.endswith("connecting with ********") for line in printed), printed
    assert "zq-unguessable-719" not in result.stdout + result.stderr
