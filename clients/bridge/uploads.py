"""``POST /api/v2/uploads``: a DUFT engine sends a file here (``post_file_to_duft_server``).

The request is ``multipart/form-data`` with a ``kind`` field and then a ``file`` field,
authenticated with HTTP Basic. The file is streamed to
``<data folder>/uploads/<kind>/<name>`` (a new name when that one is taken, never an
overwrite) and refused past :data:`MAX_UPLOAD_BYTES`. The data folder is the running
duftd's (its ``health`` answer), so tasks find the files where they read data; folders are
made 0700 and files 0600, as uploads may hold personal data. Reply ``201 {kind, name, path,
bytes}``, ``path`` relative to the data folder.

Any account of ``duft users add`` may upload (the bridge's one account store,
:mod:`clients.bridge.accounts`); a wrong password counts as a failed login, as on DUFT's
login (:mod:`clients.bridge.auth`). The route authenticates itself: the bridge's
credential check lets it through.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from aiohttp import BodyPartReader, web

from clients.bridge.auth import CREDENTIALS
from clients.bridge.web_io import HttpError, bus_of
from dte_tools.upload import UPLOAD_PATH
from dte_tools.wire import ErrorCode, Op

MAX_UPLOAD_BYTES = 200 * 1024 * 1024
KIND_FIELD_BYTES = 128
KIND = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
PRIVATE_FOLDER = 0o700
PRIVATE_FILE = 0o600


@dataclass(frozen=True)
class UploadSettings:
    data_dir: Path | None = None  # None: the running duftd's, asked per upload
    max_bytes: int = MAX_UPLOAD_BYTES


SETTINGS = web.AppKey("uploads", UploadSettings)


def register(app: web.Application) -> None:
    """Add the upload route; uploads land in the running duftd's data folder."""
    app[SETTINGS] = UploadSettings()
    app.router.add_post(UPLOAD_PATH, receive_upload)


def is_upload(request: web.Request) -> bool:
    """The one POST that takes multipart, not JSON (the guard lets it through)."""
    return request.path == UPLOAD_PATH


async def receive_upload(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    username = await _authenticate(request)
    reader = await request.multipart()
    kind_part = await reader.next()
    if not isinstance(kind_part, BodyPartReader) or kind_part.name != "kind":
        raise HttpError(400, ErrorCode.BAD_REQUEST, "the first form field must be 'kind'")
    kind = (await kind_part.read_chunk(KIND_FIELD_BYTES)).decode("utf-8", "replace").strip()
    if not kind_part.at_eof() or not KIND.fullmatch(kind):
        raise HttpError(400, ErrorCode.BAD_REQUEST, f"kind {kind!r} must be letters, digits, _ . -")
    file_part = await reader.next()
    if not isinstance(file_part, BodyPartReader) or file_part.name != "file":
        raise HttpError(400, ErrorCode.BAD_REQUEST, "the second form field must be 'file'")
    name = Path(file_part.filename or "upload").name
    if name in ("", ".", "..") or name.startswith("."):
        raise HttpError(
            400, ErrorCode.BAD_REQUEST, f"file name {file_part.filename!r} is not allowed"
        )
    data_dir = await _data_dir(request)
    folder = data_dir / "uploads" / kind
    data_dir.mkdir(mode=PRIVATE_FOLDER, parents=True, exist_ok=True)
    for level in (folder.parent, folder):
        level.mkdir(mode=PRIVATE_FOLDER, exist_ok=True)
    target, handle = _new_file(folder, name)
    size = 0
    try:
        with handle:
            while chunk := await file_part.read_chunk():
                size += len(chunk)
                if size > settings.max_bytes:
                    raise HttpError(
                        413,
                        ErrorCode.TOO_LARGE,
                        f"uploads are limited to {settings.max_bytes} bytes",
                    )
                handle.write(chunk)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    path = str(target.relative_to(data_dir))
    return web.json_response(
        {"kind": kind, "name": target.name, "path": path, "bytes": size, "user": username},
        status=201,
    )


async def _authenticate(request: web.Request) -> str:
    """The uploader's name, if HTTP Basic names an account with its password."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    try:
        username, sep, password = base64.b64decode(token, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        sep = ""
    if scheme.lower() != "basic" or not sep:
        raise HttpError(401, ErrorCode.UNAUTHORIZED, "send HTTP Basic credentials of an uploader")
    if await request.app[CREDENTIALS].verify_login(request, username, password) is None:
        raise HttpError(401, ErrorCode.UNAUTHORIZED, f"wrong username or password for {username!r}")
    return username


async def _data_dir(request: web.Request) -> Path:
    """The configured data folder, else the one the running duftd uses."""
    configured = request.app[SETTINGS].data_dir
    if configured is not None:
        return configured
    return Path((await bus_of(request).request(Op.HEALTH))["data_dir"])


def _new_file(folder: Path, name: str) -> tuple[Path, BinaryIO]:
    """Create ``name`` in ``folder``, or ``stem-2.ext``... if taken (exclusive create,
    owner-only whatever the umask)."""
    stem, suffix = Path(name).stem, Path(name).suffix
    for serial in range(1, 10_000):
        target = folder / (name if serial == 1 else f"{stem}-{serial}{suffix}")
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
        except FileExistsError:
            continue
        return target, os.fdopen(fd, "wb")
    raise HttpError(409, ErrorCode.CONFLICT, f"too many files named like {name} in {folder}")
