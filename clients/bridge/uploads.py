"""``POST /api/v2/uploads``: a DUFT engine sends a file here (``post_file_to_duft_server``).

The request is ``multipart/form-data`` with a ``kind`` field and then a ``file`` field,
authenticated with HTTP Basic. The file is streamed to
``<data folder>/uploads/<kind>/<name>`` (a new name when that one is taken, never an
overwrite) and refused past :data:`MAX_UPLOAD_BYTES`. Reply ``201 {kind, name, path,
bytes}``, ``path`` relative to the data folder.

Who may upload is one function, ``check_credentials(username, password) -> bool``. Until
the bridge's accounts (``duft users add``) are wired in, it checks
``<state dir>/uploaders.json``: ``{"<name>": "<hash_password(...)>"}`` (scrypt, salted).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import BodyPartReader, web

from clients.bridge.web_io import HttpError
from dte_tools import locate
from dte_tools.upload import UPLOAD_PATH

CredentialCheck = Callable[[str, str], bool]
MAX_UPLOAD_BYTES = 200 * 1024 * 1024
UPLOADERS_FILE = "uploaders.json"
KIND_FIELD_BYTES = 128
KIND = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_UNKNOWN = "scrypt$" + "00" * 16 + "$"


@dataclass(frozen=True)
class UploadSettings:
    data_dir: Path
    check_credentials: CredentialCheck
    max_bytes: int = MAX_UPLOAD_BYTES


SETTINGS = web.AppKey("uploads", UploadSettings)


def hash_password(password: str) -> str:
    """A salted scrypt hash for ``uploaders.json``."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


def uploaders_file_check(state_dir: Path | None) -> CredentialCheck:
    """Credentials checked against ``<state dir>/uploaders.json`` (read at each upload)."""
    path = (state_dir or locate.default_state_dir()) / UPLOADERS_FILE

    def check(username: str, password: str) -> bool:
        try:
            stored = json.loads(path.read_text(encoding="utf-8")).get(username)
        except (OSError, ValueError, AttributeError):
            stored = None
        # An unknown name costs a hash too, so answer times do not tell which names exist.
        record = stored if isinstance(stored, str) else _UNKNOWN
        try:
            _, salt, digest = record.split("$")
            given = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), **SCRYPT)
        except ValueError:
            return False
        return record is not _UNKNOWN and hmac.compare_digest(given.hex(), digest)

    return check


def register(app: web.Application, state_dir: Path | None) -> None:
    """Add the upload route; uploads land in the data folder duftd uses by default."""
    data_dir = locate.data_dir(locate.default_config_dir())
    app[SETTINGS] = UploadSettings(data_dir, uploaders_file_check(state_dir))
    app.router.add_post(UPLOAD_PATH, receive_upload)


def is_upload(request: web.Request) -> bool:
    """The one POST that takes multipart, not JSON (the guard lets it through)."""
    return request.path == UPLOAD_PATH


async def receive_upload(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    username = await _authenticate(request, settings.check_credentials)
    reader = await request.multipart()
    kind_part = await reader.next()
    if not isinstance(kind_part, BodyPartReader) or kind_part.name != "kind":
        raise HttpError(400, "bad_request", "the first form field must be 'kind'")
    kind = (await kind_part.read_chunk(KIND_FIELD_BYTES)).decode("utf-8", "replace").strip()
    if not kind_part.at_eof() or not KIND.fullmatch(kind):
        raise HttpError(400, "bad_request", f"kind {kind!r} must be letters, digits, _ . -")
    file_part = await reader.next()
    if not isinstance(file_part, BodyPartReader) or file_part.name != "file":
        raise HttpError(400, "bad_request", "the second form field must be 'file'")
    name = Path(file_part.filename or "upload").name
    if name in ("", ".", "..") or name.startswith("."):
        raise HttpError(400, "bad_request", f"file name {file_part.filename!r} is not allowed")
    folder = settings.data_dir / "uploads" / kind
    folder.mkdir(parents=True, exist_ok=True)
    target, handle = _new_file(folder, name)
    size = 0
    try:
        with handle:
            while chunk := await file_part.read_chunk():
                size += len(chunk)
                if size > settings.max_bytes:
                    raise HttpError(
                        413, "too_large", f"uploads are limited to {settings.max_bytes} bytes"
                    )
                handle.write(chunk)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    path = str(target.relative_to(settings.data_dir))
    return web.json_response(
        {"kind": kind, "name": target.name, "path": path, "bytes": size, "user": username},
        status=201,
    )


async def _authenticate(request: web.Request, check: CredentialCheck) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    try:
        username, sep, password = base64.b64decode(token, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        sep = ""
    if scheme.lower() != "basic" or not sep:
        raise HttpError(401, "unauthorized", "send HTTP Basic credentials of an uploader")
    if not await asyncio.to_thread(check, username, password):  # a slow hash: off the loop
        raise HttpError(401, "unauthorized", f"wrong username or password for {username!r}")
    return username


def _new_file(folder: Path, name: str):
    """Create ``name`` in ``folder``, or ``stem-2.ext``... if taken (exclusive create)."""
    stem, suffix = Path(name).stem, Path(name).suffix
    for serial in range(1, 10_000):
        target = folder / (name if serial == 1 else f"{stem}-{serial}{suffix}")
        try:
            return target, open(target, "xb")
        except FileExistsError:
            continue
    raise HttpError(409, "conflict", f"too many files named like {name} in {folder}")
