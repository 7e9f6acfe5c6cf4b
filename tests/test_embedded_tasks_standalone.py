"""The embedded duft-config's tasks, run standalone (no daemon) as a task author would.

Each test copies duft-config to a temporary folder and gives it its own data folder, so
the repository is never written; tasks run as real subprocesses on real SQLite files.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest

from tests.harness import environment_without_duft

EMBEDDED_CONFIG = Path(__file__).resolve().parents[1] / "duft-config"
SECRET = "s3cret-pw-never-logged"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|WARNING|ERROR)\s+(.*)$", re.M)
PROGRESS_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d PROGRESS\s+(\d+)/(\d+)", re.M)
EMR_TABLES = ("facility", "client", "visit", "lab_result")
ANALYSIS_TABLES = ("dim_client", "fact_visit", "fact_lab_result", "vl_suppression_by_month")

# Executes a notebook the way duftd's runner does: parameters go into the first cell and
# the kernel starts in the task's folder. Prints the cells' stream output.
NOTEBOOK_RUNNER = """
import json, sys
import nbformat
from nbclient import NotebookClient
path, folder, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
nb = nbformat.read(path, as_version=4)
if params:
    nb.cells[0].source = f"params = {params!r}"
client = NotebookClient(
    nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": folder}}
)
client.execute()
for cell in nb.cells:
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            sys.stdout.write(output["text"])
"""


@dataclass
class Sandbox:
    config: Path
    data: Path
    cwd: Path
    env: dict[str, str]

    @property
    def tasks(self) -> Path:
        return self.config / "system" / "data_tasks"

    def run(self, script: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self._python(str(self.tasks / script), *args)

    def run_notebook(
        self, notebook: str, params: dict[str, Any] | None = None
    ) -> subprocess.CompletedProcess[str]:
        nb_path = str(self.tasks / notebook)
        return self._python("-c", NOTEBOOK_RUNNER, nb_path, str(self.tasks), json.dumps(params))

    def _python(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
        )


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    config = tmp_path / "duft-config"
    shutil.copytree(
        EMBEDDED_CONFIG,
        config,
        ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints", "*.sqlite*"),
    )
    # A password in the user's ANA values, so tests can check it never reaches the output.
    user_file = config / "user" / "config.json"
    user = json.loads(user_file.read_text(encoding="utf-8"))
    user["dataConnectionParameters"]["ANA"]["password"] = SECRET
    user_file.write_text(json.dumps(user, indent=2), encoding="utf-8")

    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = environment_without_duft(DUFT_DATA_DIR=str(tmp_path / "data"))
    return Sandbox(config, tmp_path / "data", cwd, env)


def dump_tables(path: Path, tables: tuple[str, ...]) -> dict[str, list[tuple]]:
    """Every row of ``tables``, in a stable order, for comparing two databases."""
    with closing(sqlite3.connect(path)) as con:
        dump = {}
        for table in tables:
            width = len(con.execute(f"SELECT * FROM {table} LIMIT 0").description)
            order = ", ".join(str(i) for i in range(1, width + 1))
            dump[table] = con.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
        return dump


def scalar(path: Path, sql: str, *params: object) -> Any:
    with closing(sqlite3.connect(path)) as con:
        return con.execute(sql, params).fetchone()[0]


def test_embedded_config_declares_runnable_tasks(sandbox: Sandbox) -> None:
    """Every declared task has its file and its connections with user values (sqlite3 for
    every task shown in the UI), and every notebook is clean nbformat 4 starting with the
    ``params = {}`` cell."""
    tasks = json.loads((sandbox.config / "system" / "data_tasks.json").read_text())["dataTasks"]
    connections = json.loads((sandbox.config / "system" / "data_connections.json").read_text())
    user = json.loads((EMBEDDED_CONFIG / "user" / "config.json").read_text())
    declared = {connection["id"] for connection in connections["dataConnections"]}

    ids = {task["id"] for task in tasks}
    assert {"SAMPLE", "SLOW-SAMPLE", "SAMPLE-NOTEBOOK", "DEMO-EMR-SETUP", "DEMO-ETL"} <= ids
    for task in tasks:
        assert "/" not in task["pythonFile"] and (sandbox.tasks / task["pythonFile"]).is_file()
        for connection_id in task.get("dataConnections", []):
            assert connection_id in declared
            kind = user["dataConnectionParameters"][connection_id]["type"]
            assert kind == "sqlite3" or task["hideInUI"]  # a server is optional, not needed
        if task["pythonFile"].endswith(".ipynb"):
            nb = nbformat.read(sandbox.tasks / task["pythonFile"], as_version=4)
            nbformat.validate(nb)
            assert nb.metadata.kernelspec.name == "python3"
            assert (nb.cells[0].cell_type, nb.cells[0].source) == ("code", "params = {}")
            assert all(not cell.get("outputs") for cell in nb.cells)


def test_sample_task_runs_standalone_from_another_folder(sandbox: Sandbox) -> None:
    """The sample script finds duft-config from its own location, logs timestamped lines
    with the given name, reports every step's progress, and never prints the password."""
    result = sandbox.run("sample_task.py", '{"name": "x", "sleep_time": 0, "steps": 3}')

    assert result.returncode == 0, result.stderr
    info = [text for level, text in LOG_LINE.findall(result.stdout) if level == "INFO"]
    assert any(re.search(r"\bx\b", text) for text in info)
    assert any("sqlite3 file analysis.sqlite" in text for text in info)
    assert PROGRESS_LINE.findall(result.stdout) == [("1", "3"), ("2", "3"), ("3", "3")]
    assert "Hello from print(), x" in result.stdout
    assert SECRET not in result.stdout + result.stderr


def test_sample_task_accepts_parameters_given_as_strings(sandbox: Sandbox) -> None:
    """Parameter values sent as strings (as web forms do) are understood."""
    params = '{"sleep_time": "0", "steps": "2", "simulate_error": "false"}'
    result = sandbox.run("sample_task.py", params)

    assert result.returncode == 0, result.stderr
    assert PROGRESS_LINE.findall(result.stdout) == [("1", "2"), ("2", "2")]


def test_shared_script_takes_the_defaults_of_the_task_named_in_duft_task(
    sandbox: Sandbox,
) -> None:
    """sample_task.py is the script of SAMPLE and SLOW-SAMPLE: standalone it says so and
    uses the given values alone; with DUFT_TASK it gets that task's defaults (30 steps)."""
    params = '{"sleep_time": 0}'
    unnamed = sandbox.run("sample_task.py", params)
    sandbox.env["DUFT_TASK"] = "SLOW-SAMPLE"
    named = sandbox.run("sample_task.py", params)

    assert unnamed.returncode == 0, unnamed.stderr
    warnings = [text for level, text in LOG_LINE.findall(unnamed.stdout) if level == "WARNING"]
    assert any("SAMPLE, SLOW-SAMPLE" in text and "DUFT_TASK" in text for text in warnings)
    assert named.returncode == 0, named.stderr
    assert PROGRESS_LINE.findall(named.stdout)[-1] == ("30", "30")


def test_sample_task_simulated_error_fails_the_run(sandbox: Sandbox) -> None:
    """With ``simulate_error`` the script logs an ERROR line and exits non-zero."""
    params = '{"name": "x", "sleep_time": 0, "steps": 3, "simulate_error": true}'
    result = sandbox.run("sample_task.py", params)

    assert result.returncode != 0
    assert any(level == "ERROR" for level, _ in LOG_LINE.findall(result.stdout))
    assert "simulated error" in result.stderr


def test_demo_emr_is_reproducible_from_its_seed(sandbox: Sandbox, tmp_path: Path) -> None:
    """The generator run twice with one seed gives identical tables; another seed differs."""
    outputs = {}
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        outputs[name] = tmp_path / f"{name}.sqlite"
        result = sandbox.run(
            "make_demo_emr.py", "--out", str(outputs[name]), "--seed", seed, "--clients", "80"
        )
        assert result.returncode == 0, result.stderr

    first, again, other = (dump_tables(outputs[n], EMR_TABLES) for n in "abc")
    assert len(first["client"]) == 80
    assert first == again
    assert first != other


def test_demo_emr_task_writes_plausible_data_to_the_emr_connection(sandbox: Sandbox) -> None:
    """As a data task the generator fills the EMR connection's file in the data folder with
    plausible records: ~3-monthly visits and ~85% of viral loads suppressed."""
    result = sandbox.run("make_demo_emr.py", '{"seed": 42, "clients": 500}')

    assert result.returncode == 0, result.stderr
    emr = sandbox.data / "demo_emr.sqlite"
    assert scalar(emr, "SELECT COUNT(*) FROM client") == 500
    female = scalar(emr, "SELECT AVG(sex = 'F') FROM client")
    suppressed = scalar(emr, "SELECT AVG(result_value < 1000) FROM lab_result WHERE test_type='VL'")
    gaps = (
        "SELECT julianday(visit_date) - julianday(LAG(visit_date) OVER "
        "(PARTITION BY client_id ORDER BY visit_date)) AS gap FROM visit"
    )
    out_of_order = (
        "SELECT COUNT(*) FROM visit v JOIN client c USING (client_id) "
        "WHERE v.visit_date < c.enrolment_date OR c.birth_date >= c.enrolment_date"
    )
    assert 0.5 < female < 0.75
    assert 0.78 < suppressed < 0.92
    assert scalar(emr, f"SELECT MIN(gap) FROM ({gaps})") >= 80
    assert scalar(emr, f"SELECT MAX(gap) FROM ({gaps})") <= 100
    assert scalar(emr, out_of_order) == 0


@pytest.mark.timeout(240)
def test_sample_notebook_runs_standalone(sandbox: Sandbox) -> None:
    """The sample notebook runs top to bottom with its parameters in the first cell."""
    result = sandbox.run_notebook("sample_notebook.ipynb", {"name": "Tyrion", "sleep_time": 0})

    assert result.returncode == 0, result.stderr
    assert any("Tyrion" in text for _, text in LOG_LINE.findall(result.stdout))
    assert PROGRESS_LINE.findall(result.stdout)[-1] == ("5", "5")
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.timeout(240)
def test_demo_etl_creates_its_source_and_builds_analysis_tables_idempotently(
    sandbox: Sandbox,
) -> None:
    """On a fresh data folder the ETL creates the demo EMR, fills the analysis tables with
    counts that match the source, and a second run leaves identical tables."""
    result = sandbox.run_notebook("demo_etl.ipynb")

    assert result.returncode == 0, result.stderr
    assert "demo EMR does not exist yet" in result.stdout
    assert PROGRESS_LINE.findall(result.stdout)[-1] == ("6", "6")
    emr, ana = sandbox.data / "demo_emr.sqlite", sandbox.data / "analysis.sqlite"
    for source, target in (("client", "dim_client"), ("visit", "fact_visit")):
        assert scalar(ana, f"SELECT COUNT(*) FROM {target}") == scalar(
            emr, f"SELECT COUNT(*) FROM {source}"
        )
    vl_in_range = "FROM lab_result WHERE test_type = 'VL' AND sample_date <= '2026-06-30'"
    assert scalar(ana, "SELECT SUM(tested) FROM vl_suppression_by_month") == scalar(
        emr, f"SELECT COUNT(*) {vl_in_range}"
    )
    assert scalar(ana, "SELECT SUM(suppressed) FROM vl_suppression_by_month") == scalar(
        emr, f"SELECT COUNT(*) {vl_in_range} AND result_value < 1000"
    )
    assert (
        scalar(ana, "SELECT COUNT(*) FROM vl_suppression_by_month WHERE suppressed > tested") == 0
    )
    assert scalar(ana, "SELECT source_clients FROM etl_run_info") == 500
    first = dump_tables(ana, ANALYSIS_TABLES)

    again = sandbox.run_notebook("demo_etl.ipynb")

    assert again.returncode == 0, again.stderr
    assert "does not exist yet" not in again.stdout
    assert dump_tables(ana, ANALYSIS_TABLES) == first
    assert scalar(ana, "SELECT COUNT(*) FROM etl_run_info") == 1


@pytest.mark.timeout(240)
def test_demo_etl_reporting_date_bounds_the_analysis(sandbox: Sandbox) -> None:
    """An earlier ``reporting_date`` keeps only clients and records up to that date."""
    assert sandbox.run("make_demo_emr.py", '{"seed": 42, "clients": 300}').returncode == 0

    result = sandbox.run_notebook("demo_etl.ipynb", {"reporting_date": "2020-12-31"})

    assert result.returncode == 0, result.stderr
    emr, ana = sandbox.data / "demo_emr.sqlite", sandbox.data / "analysis.sqlite"
    enrolled = "SELECT COUNT(*) FROM client WHERE enrolment_date <= '2020-12-31'"
    assert scalar(ana, "SELECT COUNT(*) FROM dim_client") == scalar(emr, enrolled) < 300
    assert scalar(ana, "SELECT MAX(visit_date) FROM fact_visit") <= "2020-12-31"
    assert scalar(ana, "SELECT MAX(month) FROM vl_suppression_by_month") <= "2020-12"
    assert scalar(ana, "SELECT SUM(tested) FROM vl_suppression_by_month") == scalar(
        emr,
        "SELECT COUNT(*) FROM lab_result WHERE test_type = 'VL' AND sample_date <= '2020-12-31'",
    )


@pytest.mark.timeout(240)
def test_demo_etl_refuses_a_malformed_reporting_date(sandbox: Sandbox) -> None:
    """A malformed ``reporting_date`` fails the run with a message naming the parameter."""
    result = sandbox.run_notebook("demo_etl.ipynb", {"reporting_date": "30/06/2026"})

    assert result.returncode != 0
    assert "reporting_date must look like 2026-06-30" in result.stderr
