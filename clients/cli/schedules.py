"""``duft schedules [--json] [--count N]``: each schedule, its next firings, the time zone.

Asks the running duftd (which also knows each schedule's last firing); with no daemon
running it reads the schedules from the config folder and says that nothing fires
until duftd runs. Exit status 0, or 2 when the config folder cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from clients.bus import BusClient, ConnectionInfo, DaemonError, DaemonNotRunning
from dte_tools import locate
from dte_tools.wire import Op

HELP = "list scheduled data tasks with their next firing times (local time zone)"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("schedules", help=HELP, description=HELP)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--count", type=int, default=3, help="next firings to show (default 3)")
    p.add_argument(
        "--config", type=Path, metavar="DIR", help="read this duft-config folder, not duftd"
    )
    p.set_defaults(func=cmd_schedules, standalone=True)


def _from_daemon(args: argparse.Namespace) -> dict[str, Any] | None:
    try:
        with BusClient(ConnectionInfo.load(args.state_dir)) as client:
            return client.request(Op.SCHEDULES, count=args.count)
    except DaemonNotRunning:
        return None


def cmd_schedules(args: argparse.Namespace) -> int:
    # The config model and croniter only when needed: asking duftd needs neither.
    from duftd.config import load_config
    from duftd.errors import ConfigError
    from duftd.scheduler import describe_schedules

    reply = None
    if args.config is None:
        try:
            reply = _from_daemon(args)
        except DaemonError as error:
            print(f"duft: {error} [{error.code}]", file=sys.stderr)
            return 2
    source = "duftd"
    if reply is None:
        root = args.config if args.config is not None else locate.default_config_dir()
        try:
            config = load_config(root)
        except ConfigError as error:
            print(f"duft: {error}", file=sys.stderr)
            return 2
        reply = describe_schedules(config, args.count)
        source = f"{config.root} (no daemon running: nothing fires until duftd runs)"
        if args.config is not None:
            source = f"{config.root}"
    if args.json:
        print(json.dumps(reply, indent=2))
        return 0
    print(f"time zone: {reply['timezone']} (UTC{reply['utc_offset']}); schedules from {source}")
    if not reply["schedules"]:
        print("no scheduled data tasks (scheduledDataTasks in user/config.json)")
    for item in reply["schedules"]:
        about = f" - {item['description']}" if item["description"] else ""
        print(f"{item['key']}: task {item['task']}, cron {item['cron']!r}{about}")
        for moment in item["next"]:
            print(f"  next {moment['iso']}")
        last = item.get("last")
        if last:
            run = f" run {last['run']}" if last.get("run") else ""
            detail = f": {last['message']}" if last.get("message") else ""
            print(f"  last {last['fired']['iso']} {last['outcome']}{run}{detail}")
    return 0
