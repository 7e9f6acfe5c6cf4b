"""Putting a run's parameters into a notebook: DUFT's first cell or papermill's `parameters` tag."""

from __future__ import annotations

from typing import Any

import nbformat
import pytest
from nbformat import NotebookNode

from duftd.notebook.params import INJECTED_TAG, inject

PARAMS: dict[str, Any] = {
    "name": 'O\'Brien "Ned"',
    "steps": 3,
    "ratio": 0.25,
    "enabled": False,
    "nothing": None,
    "nested": {"a": [1, 2, {"b": "c"}]},
    "not an identifier": "kept in params only",
    "class": "a keyword: kept in params only",
    "params": "would shadow the dict: kept in params only",
}
# The parameters that also become variables of their own in papermill style.
VARIABLES = {
    k: v
    for k, v in PARAMS.items()
    if k in {"name", "steps", "ratio", "enabled", "nothing", "nested"}
}


def notebook(*cells: NotebookNode) -> NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    return nb


def code(source: str, *tags: str) -> NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def markdown(source: str) -> NotebookNode:
    return nbformat.v4.new_markdown_cell(source)


def run_cell(source: str) -> dict[str, Any]:
    """The variables a cell's source defines when executed."""
    namespace: dict[str, Any] = {}
    exec(compile(source, "<injected>", "exec"), namespace)  # the injected source is ours
    namespace.pop("__builtins__")
    return namespace


@pytest.mark.parametrize(
    "first",
    [
        "params = {}",
        "params={}",
        "  params = { }\n",
        "params = {}\n\n",
        "# duftd fills this\nparams = {}  # here",
    ],
)
def test_duft_first_cell_is_replaced_in_place(first: str) -> None:
    """A first code cell of just `params = {}` (any spacing, comments) becomes `params = {...}`."""
    nb = notebook(markdown("# Title"), code(first), code("print(params)"))
    assert inject(nb, PARAMS) == "duft"
    assert len(nb.cells) == 3
    assert run_cell(nb.cells[1].source) == {"params": PARAMS}
    assert INJECTED_TAG in nb.cells[1].metadata["tags"]
    assert nb.cells[2].source == "print(params)"


def test_duft_cell_that_is_also_tagged_parameters_is_replaced_not_followed() -> None:
    """A first cell both `params = {}` and tagged `parameters` is replaced; nothing is added."""
    nb = notebook(code("params = {}", "parameters"), code("x = 1"))
    assert inject(nb, {"a": 1}) == "duft"
    assert [cell.source for cell in nb.cells] == ["params = {'a': 1}", "x = 1"]
    assert nb.cells[0].metadata["tags"] == ["parameters", INJECTED_TAG]


def test_tagged_cell_gets_an_injected_cell_after_it() -> None:
    """papermill style: the `parameters` cell keeps its defaults; the injected cell follows it."""
    defaults = "name = 'default'\nsteps = 1"
    nb = notebook(
        code("import os"), markdown("text"), code(defaults, "parameters"), code("print(name)")
    )
    assert inject(nb, PARAMS) == "tagged"
    assert [cell.source for cell in nb.cells][:3] == ["import os", "text", defaults]
    injected = nb.cells[3]
    assert injected.metadata["tags"] == [INJECTED_TAG]
    variables = run_cell(injected.source)
    assert variables.pop("params") == PARAMS
    assert variables == VARIABLES
    assert nb.cells[4].source == "print(name)"


def test_params_cell_that_is_not_the_first_code_cell_is_not_the_duft_convention() -> None:
    """`params = {}` only counts as DUFT's cell when it is the first code cell."""
    nb = notebook(code("import os"), code("params = {}"))
    assert inject(nb, {"a": 1}) == "top"
    assert [cell.source for cell in nb.cells] == [
        "params = {'a': 1}\na = 1",
        "import os",
        "params = {}",
    ]


def test_first_cell_with_defaults_is_not_replaced() -> None:
    """A first cell `params = {...}` with values is the author's code, not DUFT's placeholder."""
    nb = notebook(code("params = {'a': 0}"), code("print(params)"))
    assert inject(nb, {"a": 1}) == "top"
    assert nb.cells[1].source == "params = {'a': 0}"


def test_notebook_without_a_parameters_cell_gets_one_at_the_top() -> None:
    """With neither convention the injected cell goes first, so `params` always exists."""
    nb = notebook(markdown("# Title"), code("print(params)"))
    assert inject(nb, {}) == "top"
    assert run_cell(nb.cells[0].source) == {"params": {}}
    assert nb.cells[0].metadata["tags"] == [INJECTED_TAG]
    assert [cell.cell_type for cell in nb.cells] == ["code", "markdown", "code"]


def test_empty_notebook_gets_the_injected_cell() -> None:
    """A notebook with no cells at all still gets `params`."""
    nb = notebook()
    assert inject(nb, {"a": 1}) == "top"
    assert run_cell(nb.cells[0].source) == {"params": {"a": 1}, "a": 1}


def test_an_earlier_injected_cell_is_replaced_not_kept() -> None:
    """An old injected cell (a notebook saved by papermill or duftd) gives way to the new one."""
    nb = notebook(
        code("name = 'default'", "parameters"),
        code("params = {'name': 'old'}\nname = 'old'", INJECTED_TAG),
        code("print(name)"),
    )
    assert inject(nb, {"name": "new"}) == "tagged"
    sources = [cell.source for cell in nb.cells]
    assert sources == ["name = 'default'", "params = {'name': 'new'}\nname = 'new'", "print(name)"]


def test_executed_duft_notebook_runs_again_with_new_values() -> None:
    """duftd's own executed copy (first cell replaced and tagged) takes new values when rerun."""
    nb = notebook(code("params = {}", "parameters"), code("print(params)"))
    inject(nb, {"name": "old"})
    inject(nb, {"name": "new"})
    namespace: dict[str, Any] = {}
    for cell in nb.cells[:-1]:
        namespace.update(run_cell(cell.source))
    assert namespace["params"] == {"name": "new"}
    assert sum(INJECTED_TAG in cell.metadata.get("tags", []) for cell in nb.cells) == 1
