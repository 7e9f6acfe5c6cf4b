"""``NAME=VALUE`` items of the command line (``duft run -p``, ``duft config set-connection``).

Client-side parsing, so that ``duft run`` needs nothing from the daemon package. A key
given twice keeps the last value, as shells do.
"""

from __future__ import annotations

import json
from typing import Any


class AssignmentError(ValueError):
    """An item is not ``NAME=VALUE``; the message names it and gives an example."""

    code = "bad_parameter"


def parse_cli_value(text: str) -> Any:
    """``text`` as JSON where it parses (``0.5``, ``true``, ``"x"``, ``[1]``), else as is."""

    def refuse(constant: str) -> Any:
        raise ValueError(constant)  # NaN and Infinity are not JSON

    try:
        return json.loads(text, parse_constant=refuse)
    except ValueError:
        return text


def split_assignment(item: str, example: str) -> tuple[str, str]:
    """``"a=x y"`` -> ``("a", "x y")``; anything else is refused, naming it and ``example``."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise AssignmentError(f"{item!r} is not NAME=VALUE; write e.g. {example}")
    return key, text


def parse_cli_assignments(items: list[str]) -> dict[str, Any]:
    """``["a=1", "b=x y"]`` -> ``{"a": 1, "b": "x y"}``."""
    pairs = (split_assignment(item, "sleep_time=0.5") for item in items)
    return {key: parse_cli_value(text) for key, text in pairs}
