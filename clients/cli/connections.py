"""``duft test-connection ID`` and ``duft config set-connection ID KEY=VALUE ...``.

Neither needs a daemon:

- ``test-connection`` asks the running duftd (so it tests the values duftd has loaded,
  with duftd's data folder); with no daemon running, or with ``--config``/``--direct``,
  it tests in this process from the config folder on disk and says so on stderr.
  Exit status 0 when the test query ran, 1 when it failed, 2 for an unknown id.
- ``config set-connection`` writes values into ``user/config.json`` (atomically, the rest
  of the file kept as it was). Values are stored as text, as DUFT's own settings page
  stores them. When the connection declares a password and none is given, it is asked
  for without echo on a terminal (empty keeps the current one); with no terminal it is
  left unchanged. A running duftd serving the same folder is told to reload, so runs
  and ``test-connection`` use the new values at once. The password is never printed.
"""

from __future__ import annotations

import argparse
import difflib
import getpass
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clients.bus import BusClient, ConnectionInfo, DaemonError, DaemonNotRunning
from clients.cli.assignments import AssignmentError, split_assignment
from dte_tools import locate
from dte_tools.redact import MASK, is_secret_key
from dte_tools.wire import Op

if TYPE_CHECKING:
    from duftd.config import ConnectionSpec, LoadedConfig

TEST_HELP = "connect to a data connection and run its test query (works without a daemon)"
SET_HELP = "write a connection's values into user/config.json (no daemon needed)"


def add_parsers(sub: Any) -> None:
    """Register ``test-connection`` and ``config set-connection`` on ``duft``'s subparsers."""
    p = sub.add_parser("test-connection", help=TEST_HELP, description=TEST_HELP)
    p.add_argument("id", help="the connection id, e.g. ANA")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--config", type=Path, metavar="DIR", help="test from this duft-config folder, directly"
    )
    p.add_argument("--direct", action="store_true", help="test in this process, not in duftd")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")
    p.set_defaults(func=cmd_test_connection, standalone=True)

    config = sub.add_parser("config", help="change duft-config settings (no daemon needed)")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    p = config_sub.add_parser("set-connection", help=SET_HELP, description=SET_HELP)
    p.add_argument("id", help="the connection id, e.g. EMR_SERVER")
    p.add_argument(
        "assignments", nargs="*", metavar="KEY=VALUE", help="values, e.g. server=db.local"
    )
    p.add_argument("--config", type=Path, metavar="DIR", help="the duft-config folder")
    p.set_defaults(func=cmd_set_connection, standalone=True)


def _config_root(args: argparse.Namespace) -> Path:
    return args.config if args.config is not None else locate.default_config_dir()


def _daemon(args: argparse.Namespace) -> BusClient | None:
    try:
        return BusClient(ConnectionInfo.load(args.state_dir))
    except DaemonNotRunning:
        return None


# -- test-connection -----------------------------------------------------------------


def cmd_test_connection(args: argparse.Namespace) -> int:
    result: dict[str, Any] | None = None
    client = None if args.direct or args.config is not None else _daemon(args)
    if client is not None:
        try:
            with client:
                result = client.request(Op.TEST_CONNECTION, id=args.id, timeout_s=args.timeout)
        except DaemonNotRunning:
            result = None
        except DaemonError as error:
            print(f"duft: {error} [{error.code}]", file=sys.stderr)
            return 2
    if result is None:
        # Testing directly reads the config (the daemon package): only on this path.
        from duftd import connections
        from duftd.config import load_config
        from duftd.config.user_file import user_config_path
        from duftd.errors import DuftError

        try:
            config = load_config(_config_root(args))
            data_dir = locate.data_dir(config.root)
            target = connections.find_target(config, args.id, data_dir)
        except DuftError as error:
            print(f"duft: {error} [{error.code}]", file=sys.stderr)
            return 2
        why = "as asked" if args.direct or args.config is not None else "no daemon running"
        print(
            f"duft: {why}: testing directly with the values in {user_config_path(config.root)}",
            file=sys.stderr,
        )
        result = connections.run_test(target, args.timeout).to_dict()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        took = f"{result['seconds'] * 1000:.0f} ms"
        head = f"{result['id']} ({result['target']})"
        if result["ok"]:
            print(f"{head}: ok, {result['query']} took {took}")
            if result.get("result") is not None:
                print(f"  first row: {result['result']}")
        else:
            print(f"{head}: FAILED after {took}")
            print(f"  {result['message']}")
    return 0 if result["ok"] else 1


# -- config set-connection ----------------------------------------------------------


def declared_connection(config: LoadedConfig, connection_id: str) -> ConnectionSpec:
    """The connection ``connection_id`` declares, or an error naming the declared ones
    (also used by the bridge's settings screen, so both refuse alike)."""
    from duftd import connections
    from duftd.errors import UnknownConnectionError

    declared = connections.declared_connections(config)
    spec = declared.get(connection_id)
    if spec is None:
        close = difflib.get_close_matches(connection_id, sorted(declared), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UnknownConnectionError(
            f"unknown connection {connection_id!r}: {hint}declared connections are "
            f"{', '.join(sorted(declared)) or 'none'} (in data_connections.json files); "
            "nothing was written"
        )
    return spec


def cmd_set_connection(args: argparse.Namespace) -> int:
    from duftd.config import load_config
    from duftd.config.user_file import set_connection_values
    from duftd.errors import ConfigError, UnknownConnectionError

    try:
        # Kept as text, as DUFT's settings page stores connection values.
        values = dict(split_assignment(item, "server=db.local") for item in args.assignments)
        config = load_config(_config_root(args))
    except (AssignmentError, ConfigError) as error:
        print(f"duft: {error}", file=sys.stderr)
        return 2
    try:
        spec = declared_connection(config, args.id)
    except UnknownConnectionError as error:
        print(f"duft: {error}", file=sys.stderr)
        return 2
    params = [p.name for p in spec.params]
    for key in values:
        if params and key not in params:
            print(
                f"duft: note: {key} is not a declared param of {args.id} "
                f"(declared: {', '.join(params)}); written anyway",
                file=sys.stderr,
            )
    secret_fields = sorted(spec.password_fields)
    notes: list[str] = []
    for field in secret_fields:
        if field in values:
            continue
        if sys.stdin.isatty():
            answer = getpass.getpass(f"{field} for {args.id} (empty keeps the current one): ")
            if answer:
                values[field] = answer
            else:
                notes.append(f"{field} unchanged")
        else:
            notes.append(f"{field} unchanged (no terminal to ask on; give {field}=... to set it)")
    if not values:
        print(f"duft: nothing to change for {args.id}; " + "; ".join(notes), file=sys.stderr)
        return 0
    try:
        path = set_connection_values(config.root, args.id, values)
    except (ConfigError, OSError) as error:
        print(f"duft: {error}", file=sys.stderr)
        return 2
    shown = [
        f"{key}={MASK}" if key in secret_fields or is_secret_key(key) else f"{key}={value}"
        for key, value in values.items()
    ]
    print(f"{args.id}: set {', '.join(shown)} in {path}")
    for note in notes:
        print(f"  {note}")
    print(f"  {_tell_daemon(args, config.root)}")
    return 0


def _tell_daemon(args: argparse.Namespace, root: Path) -> str:
    """Ask a running duftd that serves ``root`` to reload; say what happened."""
    client = _daemon(args)
    if client is None:
        return "no duftd running: it reads the new values when it starts"
    try:
        with client:
            served = Path(client.request(Op.HEALTH)["config"]).resolve()
            if served != root.resolve():
                return f"the running duftd serves {served}, not this folder: not reloaded"
            client.request(Op.RELOAD)
    except (DaemonError, DaemonNotRunning) as error:
        return f"could not ask duftd to reload ({error}); run a reload to use the new values"
    return "duftd reloaded its config: new runs use the new values"
