"""Send a file to a DUFT server: DUFT's ``post_file_to_duft_server``.

The file goes as ``multipart/form-data`` (fields ``kind`` and ``file``) to
``POST <server>/api/v2/uploads`` with HTTP Basic credentials, which is what duft-bridge
accepts (see its README section); the reply says where the file was stored. urllib is
imported inside the call so that importing dte_tools stays cheap.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

UPLOAD_PATH = "/api/v2/uploads"
UPLOAD_TIMEOUT_S = 60.0
CHUNK_BYTES = 256 * 1024


class UploadError(RuntimeError):
    """The server did not take the file; the message says why and what to check."""


def post_file_to_duft_server(
    server: str,
    username: str,
    password: str,
    file_path: str | os.PathLike[str],
    kind: str,
    timeout: float = UPLOAD_TIMEOUT_S,
) -> dict[str, Any]:
    """Post ``file_path`` as ``kind`` to the DUFT server at ``server``; returns its reply.

    ``server`` is the ``DUFT-SERVER-API`` connection's URL (``https://`` is assumed when
    it has no scheme). Raises :class:`UploadError` on a refusal, a timeout or no answer.
    """
    import base64
    import secrets
    import urllib.error
    import urllib.request

    path = Path(file_path)
    if not path.is_file():
        raise UploadError(f"cannot upload {path}: no such file")
    base = server.strip().rstrip("/")
    if "://" not in base:
        base = f"https://{base}"
    url = base + UPLOAD_PATH
    boundary = secrets.token_hex(16)
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="kind"\r\n\r\n{kind}\r\n'
        f"--{boundary}\r\nContent-Disposition: form-data; "
        f'name="file"; filename="{_header_safe(path.name)}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    length = len(head) + path.stat().st_size + len(tail)
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    request = urllib.request.Request(
        url,
        data=_body(head, path, tail),
        method="POST",
        headers={
            "Authorization": f"Basic {token}",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(length),
            "Accept": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        raise UploadError(_refusal(url, username, error.code, error.read())) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise UploadError(f"cannot upload {path.name} to {url}: {reason}") from None


def _body(head: bytes, path: Path, tail: bytes):
    """The request body, streamed: the file is never read into memory whole."""
    yield head
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK_BYTES):
            yield chunk
    yield tail


def _header_safe(name: str) -> str:
    return "".join(c if c.isprintable() and c not in '"\\' else "_" for c in name)


def _refusal(url: str, username: str, status: int, body: bytes) -> str:
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body.decode("utf-8", "replace").strip()[:300]
    if status == 401:
        return (
            f"{url} refused the credentials of user {username!r} (HTTP 401: {message}); "
            "check the username and password of the DUFT-SERVER-API connection"
        )
    return f"{url} refused the upload (HTTP {status}): {message}"
