"""Putting a run's parameters into a notebook, the DUFT way or the papermill way.

DUFT's convention: the first code cell is exactly ``params = {}`` and is replaced by
``params = {...}``. papermill's: a cell tagged ``parameters`` keeps its defaults and a
cell tagged ``injected-parameters`` is inserted after it. A notebook with neither gets
the injected cell at the top, so ``params`` always exists. A cell injected by an earlier
run (a notebook saved by papermill or by duftd) is dropped first, so the new values win.
"""

from __future__ import annotations

import keyword
import re
from typing import Any

import nbformat
from nbformat import NotebookNode

# ``params = {}`` alone, comments aside (an author's note must not turn the cell into code
# that would run after the injected cell and wipe the parameters).
DUFT_PARAMS_CELL = re.compile(r"^\s*params\s*=\s*\{\s*\}\s*$")
COMMENT = re.compile(r"#[^\n]*")
INJECTED_TAG = "injected-parameters"


def _source(params: dict[str, Any], with_variables: bool) -> str:
    lines = [f"params = {params!r}"]
    if with_variables:  # papermill style: each parameter also as a variable of its own
        lines += [f"{name} = {value!r}" for name, value in params.items() if _is_variable(name)]
    return "\n".join(lines)


def _is_variable(name: str) -> bool:
    """Whether a parameter can also be a variable: an identifier, not a keyword, not ``params``."""
    return name.isidentifier() and not keyword.iskeyword(name) and name != "params"


def inject(nb: NotebookNode, params: dict[str, Any]) -> str:
    """Inject ``params`` into ``nb`` in place; returns how ("duft", "tagged" or "top")."""
    nb.cells = [cell for cell in nb.cells if INJECTED_TAG not in cell.metadata.get("tags", [])]
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    if code_cells and DUFT_PARAMS_CELL.match(COMMENT.sub("", code_cells[0].source)):
        code_cells[0].source = _source(params, with_variables=False)
        code_cells[0].metadata.setdefault("tags", []).append(INJECTED_TAG)
        return "duft"
    cell = nbformat.v4.new_code_cell(_source(params, with_variables=True))
    cell.metadata["tags"] = [INJECTED_TAG]
    for index, existing in enumerate(nb.cells):
        if "parameters" in existing.metadata.get("tags", []):
            nb.cells.insert(index + 1, cell)
            return "tagged"
    nb.cells.insert(0, cell)
    return "top"
