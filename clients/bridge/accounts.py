"""User accounts for the bridge's logins, kept in ``<state dir>/users.json``.

``duft users add|remove|list`` writes the file; the bridge reads it on each login and
each request that carries a user's token, so a removed user is refused at once. The file
is mode 0600 (it holds password hashes) and is replaced atomically. Passwords are hashed
with argon2id (argon2-cffi's defaults), never stored or logged in clear.

Shape: ``{"users": {"<name>": {"hash": "$argon2id$...", "permissions": [...]}}}``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

USERS_FILE_NAME = "users.json"
# The permissions DUFT's documentation names for its web UI.
RUN_DATA_TASK = "run_data_task"
CHANGE_SETTINGS = "change_settings"
PERMISSIONS = (RUN_DATA_TASK, CHANGE_SETTINGS)
USERNAME = re.compile(r"[A-Za-z0-9_.@+-]{1,64}")
MIN_PASSWORD_LENGTH = 8

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified when the user does not exist, so that an unknown name costs as long as a
    wrong password and the answer time does not tell which names exist (made on first use:
    hashing costs tens of milliseconds that `duft`'s other commands should not pay)."""
    return _hasher.hash("not a password of anyone")


class AccountError(ValueError):
    """A refused change to the accounts file (the message says what to do)."""


@dataclass(frozen=True)
class Account:
    name: str
    permissions: frozenset[str]
    # Changes with the password: tokens carry it, so a new password (or a new account
    # of the same name) revokes the tokens issued before.
    password_stamp: str = ""


def _account(name: str, entry: dict) -> Account:
    stored = entry.get("hash")
    stamp = hashlib.sha256(stored.encode()).hexdigest()[:16] if isinstance(stored, str) else ""
    return Account(name, frozenset(entry.get("permissions", ())), stamp)


def users_path(state_dir: Path) -> Path:
    return Path(state_dir) / USERS_FILE_NAME


def _read(path: Path) -> dict[str, dict]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise AccountError(f"{path} cannot be read as JSON ({error}); fix or remove it") from None
    users = document.get("users") if isinstance(document, dict) else None
    if not isinstance(users, dict):
        raise AccountError(f'{path} must hold {{"users": {{...}}}}; fix or remove it')
    return users


def _write(path: Path, users: dict[str, dict]) -> None:
    """Replace the file atomically; it is created 0600 and stays so."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # the state folder: owner only
    handle, temp_name = tempfile.mkstemp(prefix=".users.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as temp:
            json.dump({"users": users}, temp, indent=2, sort_keys=True)
            temp.write("\n")
            temp.flush()
            os.fsync(temp.fileno())
        Path(temp_name).chmod(0o600)
        Path(temp_name).replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            Path(temp_name).unlink()
        raise


def list_accounts(state_dir: Path) -> list[Account]:
    return [_account(name, entry) for name, entry in sorted(_read(users_path(state_dir)).items())]


def has_accounts(state_dir: Path) -> bool:
    """Whether any account exists (then the bridge turns DUFT's user authentication on)."""
    try:
        return bool(_read(users_path(state_dir)))
    except AccountError:
        return True  # a damaged file must not silently turn logins off


def add_account(state_dir: Path, name: str, password: str, permissions: set[str]) -> Path:
    """Create or replace ``name``'s account; returns the file."""
    if not USERNAME.fullmatch(name):
        raise AccountError(
            f"user name {name!r} must be 1-64 letters, digits or . _ @ + - (no spaces)"
        )
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    unknown = permissions - set(PERMISSIONS)
    if unknown:
        raise AccountError(
            f"unknown permission(s) {', '.join(sorted(unknown))}; known: {', '.join(PERMISSIONS)}"
        )
    path = users_path(state_dir)
    users = _read(path)
    users[name] = {"hash": _hasher.hash(password), "permissions": sorted(permissions)}
    _write(path, users)
    return path


def remove_account(state_dir: Path, name: str) -> Path:
    path = users_path(state_dir)
    users = _read(path)
    if name not in users:
        known = ", ".join(sorted(users)) or "none"
        raise AccountError(f"no user {name!r} (users: {known})")
    del users[name]
    _write(path, users)
    return path


def find_account(state_dir: Path, name: str) -> Account | None:
    try:
        entry = _read(users_path(state_dir)).get(name)
    except AccountError:
        return None
    if not isinstance(entry, dict):
        return None
    return _account(name, entry)


def verify_password(state_dir: Path, name: str, password: str) -> Account | None:
    """The account if ``password`` is ``name``'s (argon2 verifies in constant time)."""
    try:
        entry = _read(users_path(state_dir)).get(name)
    except AccountError:
        entry = None
    stored = entry.get("hash") if isinstance(entry, dict) else None
    try:
        _hasher.verify(stored if isinstance(stored, str) else _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return None
    if not isinstance(stored, str):
        return None
    return _account(name, entry)
