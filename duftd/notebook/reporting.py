"""The reporting client: an nbclient that tells duftd about cells and their output.

Cell started/finished, progress after each cell that succeeded, and every stream line of
the kernel, the moment nbclient sees it, as events of the run.
"""

from __future__ import annotations

import re
from typing import Any

from nbclient import NotebookClient
from nbformat import NotebookNode

from dte_tools.backends import DaemonBackend
from dte_tools.wire import Kind

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


class ReportingClient(NotebookClient):
    """An nbclient that reports cells and stream output to duftd as they happen."""

    def __init__(self, nb: NotebookNode, backend: DaemonBackend, **kwargs: Any) -> None:
        super().__init__(nb, **kwargs)
        self.backend = backend
        # The cells nbclient will execute: code, not blank, not tagged to be skipped.
        self.code_indexes = [
            i
            for i, c in enumerate(nb.cells)
            if c.cell_type == "code"
            and c.source.strip()
            and self.skip_cells_with_tag not in c.metadata.get("tags", [])
        ]
        self.finished_cells = 0
        self.on_cell_execute = self.on_execute
        self.on_cell_executed = self.on_executed

    def _cell_event(self, phase: str, cell_index: int, **extra: Any) -> None:
        number = self.code_indexes.index(cell_index) + 1 if cell_index in self.code_indexes else 0
        self.backend.emit(
            Kind.CELL,
            {
                "phase": phase,
                "index": cell_index,
                "number": number,
                "count": len(self.code_indexes),
                **extra,
            },
        )

    async def on_execute(self, cell: NotebookNode, cell_index: int) -> None:
        self._cell_event("started", cell_index)

    async def on_executed(
        self, cell: NotebookNode, cell_index: int, execute_reply: dict[str, Any]
    ) -> None:
        """A cell that raised (or was interrupted) is finished but not progress."""
        status = execute_reply.get("content", {}).get("status", "ok")
        self._cell_event("finished", cell_index, status=status)
        if status != "ok":
            return
        self.finished_cells += 1
        total = len(self.code_indexes)
        self.backend.emit(
            Kind.PROGRESS,
            {
                "done": self.finished_cells,
                "total": total,
                "message": f"cell {self.finished_cells}/{total}",
            },
        )

    def output(
        self, outs: list[NotebookNode], msg: dict[str, Any], display_id: str | None, cell_index: int
    ) -> NotebookNode | None:
        """Stream output lines become stdout/stderr events the moment the kernel sends them."""
        if msg["msg_type"] == "stream":
            kind = Kind.STDERR if msg["content"].get("name") == "stderr" else Kind.STDOUT
            for line in msg["content"].get("text", "").splitlines():
                self.backend.emit(kind, {"text": strip_ansi(line)})
        return super().output(outs, msg, display_id, cell_index)
