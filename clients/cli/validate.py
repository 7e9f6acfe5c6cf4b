"""``duft validate [--config DIR] [--json]``: check a duft-config folder, no daemon needed.

Exit status: 0 when there are no errors (warnings allowed), 1 when there are errors,
2 when DIR is not a duft-config folder at all.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dte_tools.locate import default_config_dir

if TYPE_CHECKING:
    from duftd.config import LoadedConfig

HELP = "check a duft-config folder and report every problem (no daemon needed)"


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="DIR",
        type=Path,
        default=None,
        help="the duft-config folder (default: $DUFT_CONFIG_DIR, else the embedded one)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``validate`` on the ``duft`` command's subparsers (``func`` is :func:`run`)."""
    parser = subparsers.add_parser("validate", help=HELP, description=HELP)
    _add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def report(config: LoadedConfig) -> dict[str, Any]:
    """The ``--json`` document."""
    return {
        "config": str(config.root),
        "tasks": {
            address: {"runnable": task.runnable, "problems": list(task.problems)}
            for address, task in config.tasks.items()
        },
        "diagnostics": [d.to_dict() for d in config.diagnostics],
        "errors": len(config.errors),
        "warnings": len(config.warnings),
    }


def run(args: argparse.Namespace) -> int:
    from duftd.config import load_config  # the config model: only for this command
    from duftd.config.mentions import undeclared_mentions
    from duftd.errors import ConfigError

    root = args.config if args.config is not None else default_config_dir()
    try:
        config = load_config(root)
    except ConfigError as exc:
        print(f"duft validate: {exc}", file=sys.stderr)
        return 2
    config.diagnostics.extend(undeclared_mentions(config))
    errors, warnings = config.errors, config.warnings
    if args.json:
        print(json.dumps(report(config), indent=2))
    else:
        for diagnostic in errors + warnings:
            print(f"{diagnostic.severity}: {diagnostic}")
        runnable = sum(task.runnable for task in config.tasks.values())
        print(
            f"{config.root}: {len(config.tasks)} tasks ({runnable} runnable), "
            f"{len(errors)} errors, {len(warnings)} warnings"
        )
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="duft validate", description=HELP)
    _add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
