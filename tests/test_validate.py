"""`duft validate`: a real subprocess on real config folders, plus the argparse hook."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from clients.cli import validate
from tests.harness import FIXTURES_DIR

REPO = Path(__file__).resolve().parents[1]


def duft_validate(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "clients.cli.validate", *map(str, args)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=30)


def clean_config(tmp_path: Path) -> Path:
    root = tmp_path / "cfg"
    (root / "system" / "data_tasks").mkdir(parents=True)
    (root / "system" / "data_tasks" / "t.py").write_text("print(1)\n")
    tasks = [{"id": "T", "name": "T", "pythonFile": "t.py"}]
    (root / "system" / "data_tasks.json").write_text(json.dumps({"dataTasks": tasks}))
    return root


@pytest.fixture(scope="module")
def fixture_report() -> dict[str, Any]:
    fixtures = FIXTURES_DIR
    result = duft_validate("--config", fixtures, "--json")
    assert result.returncode == 1, result.stderr
    return json.loads(result.stdout)


def messages(report: dict[str, Any], **match: Any) -> list[str]:
    return [d["message"] for d in report["diagnostics"] if all(d[k] == v for k, v in match.items())]


def test_json_report_shape_and_counts(fixture_report: dict[str, Any]) -> None:
    """--json gives config, per-task runnable/problems, diagnostics and error/warning counts."""
    assert fixture_report["config"].endswith("duft-config-public")
    assert len(fixture_report["tasks"]) == 17
    assert fixture_report["tasks"]["test:UPDATE"]["runnable"] is False
    assert "update.py' not found" in fixture_report["tasks"]["test:UPDATE"]["problems"][0]
    severities = [d["severity"] for d in fixture_report["diagnostics"]]
    assert fixture_report["errors"] == severities.count("error") == 17
    assert fixture_report["warnings"] == severities.count("warning") > 0


def test_every_fixture_quirk_is_named(fixture_report: dict[str, Any]) -> None:
    """Each quirk from the fixtures README appears with its file, task/connection and field."""
    assert messages(fixture_report, task_id="SAMPLE", connection_id="MyOwnConnection")
    for cid in ("UNITTEST", "POSTGRRESQL_TEST", "MYSQL_TEST", "EMPS"):
        assert messages(fixture_report, file="user/config.json", connection_id=cid), cid
    assert messages(fixture_report, task_id="NON-EXISTING", field="pythonFile", severity="error")
    (space,) = messages(fixture_report, file="system/data_tasks.json", severity="warning",
                        task_id="EPMS_ETL", field="pythonFile")  # fmt: skip
    assert "EPMS ETL.ipynb" in space
    shared = messages(fixture_report, file="apps/test/data_tasks.json", field="id")
    assert any("test:SAMPLE" in m for m in shared)
    assert messages(
        fixture_report, task_id="SAMPLE-PARAM-NOTEBOOK", field="supportedParameters.gender"
    )


def test_human_output_lists_errors_first_then_a_summary(fixtures_dir: Path) -> None:
    """Plain output has one line per diagnostic, errors before warnings, then a summary."""
    result = duft_validate("--config", fixtures_dir)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    kinds = [line.split(":", 1)[0] for line in lines[:-1]]
    assert kinds == sorted(kinds)  # "error" sorts before "warning"
    assert (
        "error: system/data_tasks.json:206:5: task NON-EXISTING: field pythonFile:" in result.stdout
    )
    assert lines[-1].endswith("17 tasks (0 runnable), 17 errors, 27 warnings")


def test_clean_config_exits_zero(tmp_path: Path) -> None:
    """A config without errors exits 0."""
    result = duft_validate("--config", clean_config(tmp_path))
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip().endswith("1 tasks (1 runnable), 0 errors, 0 warnings")


def test_warnings_alone_exit_zero(fixtures_dir: Path, tmp_path: Path) -> None:
    """The fixtures with every script present have only warnings, so exit 0."""
    root = Path(shutil.copytree(fixtures_dir, tmp_path / "cfg"))
    names = ["EPMS ETL.ipynb", "sample_task.py", "sample_task_from_root.py", "update.py",
             "sample_notebook.ipynb", "sample_param_notebook.ipynb", "sample_data_upload.ipynb",
             "does_not_exist.ipynb"]  # fmt: skip
    for folder in (root / "system" / "data_tasks", root / "apps" / "test" / "data_tasks"):
        folder.mkdir()
        for name in names:
            (folder / name).write_text("")
    result = duft_validate("--config", root, "--json")
    assert result.returncode == 0, result.stdout
    report = json.loads(result.stdout)
    assert report["errors"] == 0 and all(t["runnable"] for t in report["tasks"].values())


def test_not_a_config_folder_exits_two(tmp_path: Path) -> None:
    """A folder that is not a duft-config gives exit 2 and one clear line on stderr."""
    result = duft_validate("--config", tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == (
        f"duft validate: {tmp_path} is not a duft-config folder: it has no system/ folder "
        "(expected system/data_tasks.json)"
    )


def test_default_config_dir_comes_from_the_environment(tmp_path: Path) -> None:
    """Without --config, $DUFT_CONFIG_DIR is validated."""
    env = {"DUFT_CONFIG_DIR": str(clean_config(tmp_path)), "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-m", "clients.cli.validate", "--json"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["config"] == str((tmp_path / "cfg").resolve())


def test_add_parser_registers_the_subcommand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """add_parser wires `validate` into a parent parser whose func is run."""
    parser = argparse.ArgumentParser(prog="duft")
    validate.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["validate", "--config", str(clean_config(tmp_path)), "--json"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["tasks"] == {"T": {"runnable": True, "problems": []}}
