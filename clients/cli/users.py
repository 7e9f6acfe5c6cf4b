"""``duft users add|remove|list``: the accounts of duft-bridge's logins (no daemon needed).

Accounts live in ``<state dir>/users.json`` (mode 0600, argon2id hashes; see
:mod:`clients.bridge.accounts`). As soon as one exists, the bridge turns DUFT's user
authentication on and its web UI asks for a login. The password is asked for without
echo on a terminal, or read from the first line of standard input with
``--password-stdin``; it never appears on a command line or in the environment.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from clients.bridge import accounts
from dte_tools import locate

HELP = "manage the accounts that can log in to duft-bridge (no daemon needed)"


def add_parser(sub: Any) -> None:
    users = sub.add_parser("users", help=HELP, description=HELP)
    users_sub = users.add_subparsers(dest="users_command", required=True, metavar="COMMAND")

    p = users_sub.add_parser("add", help="create an account, or replace its password")
    p.add_argument("name")
    p.add_argument(
        "--permission",
        action="append",
        choices=accounts.PERMISSIONS,
        help=f"a permission (repeat for more; default {accounts.RUN_DATA_TASK})",
    )
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    p.set_defaults(func=cmd_add, standalone=True)

    p = users_sub.add_parser("remove", help="delete an account (its tokens stop working)")
    p.add_argument("name")
    p.set_defaults(func=cmd_remove, standalone=True)

    p = users_sub.add_parser("list", help="list the accounts and their permissions")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_list, standalone=True)


def _state_dir(args: argparse.Namespace) -> Path:
    return args.state_dir or locate.default_state_dir()


def _password(args: argparse.Namespace) -> str | None:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        print("duft: no terminal to ask for the password on; use --password-stdin", file=sys.stderr)
        return None
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        print("duft: the two passwords differ; nothing was changed", file=sys.stderr)
        return None
    return first


def cmd_add(args: argparse.Namespace) -> int:
    password = _password(args)
    if password is None:
        return 2
    permissions = set(args.permission or [accounts.RUN_DATA_TASK])
    try:
        path = accounts.add_account(_state_dir(args), args.name, password, permissions)
    except (accounts.AccountError, OSError) as error:
        print(f"duft: {error}", file=sys.stderr)
        return 2
    print(f"{args.name}: saved with {', '.join(sorted(permissions))} in {path}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    try:
        path = accounts.remove_account(_state_dir(args), args.name)
    except (accounts.AccountError, OSError) as error:
        print(f"duft: {error}", file=sys.stderr)
        return 2
    print(f"{args.name}: removed from {path}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    try:
        found = accounts.list_accounts(_state_dir(args))
    except accounts.AccountError as error:
        print(f"duft: {error}", file=sys.stderr)
        return 2
    rows = [{"name": a.name, "permissions": sorted(a.permissions)} for a in found]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no accounts: duft-bridge works with its start-up token only")
    for row in rows:
        print(f"{row['name']}: {', '.join(row['permissions']) or '(read only)'}")
    return 0
