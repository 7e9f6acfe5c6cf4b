"""Replace a duft-config folder with a branch of its repository: DUFT's UPDATE task.

``download_github_repo(repo_url, save_path, final_repo_name=..., branch=..., user_dir=...)``
fetches the branch (``<repo_url>/archive/refs/heads/<branch>.zip`` for an http(s) URL, or
``git archive`` of a local path or ``file://`` repository, for sites without internet and
for tests), unpacks it in a folder beside the target (same filesystem, so the swap is a
rename), copies the target's ``user_dir`` into it, then renames the target to a backup and
the new tree into its place. Until that last step nothing of the running configuration
changes, so any failure leaves it as it was; if the second rename fails the first is
undone. The three newest backups are kept.

Heavy imports (urllib, zipfile, subprocess) happen inside the call: importing this module
costs a task nothing.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from dte_tools import locate
from dte_tools.task import DataTaskEnvironment, initialise_data_task

CHUNK_BYTES = 256 * 1024
DOWNLOAD_TIMEOUT_S = 60.0
BACKUPS_KEPT = 3
BACKUP_MARK = ".backup-"


class UpdateError(RuntimeError):
    """The update could not be done; the running configuration is unchanged."""


def download_github_repo(
    repo_url: str,
    save_path: str | os.PathLike[str] | None,
    final_repo_name: str = "duft-config",
    branch: str = "main",
    user_dir: str = "user",
) -> str:
    """Swap ``final_repo_name`` for ``branch`` of ``repo_url``; returns the target's path.

    ``save_path`` is where the downloaded archive is kept (empty: a temporary folder).
    A bare ``final_repo_name`` is a folder beside the running duft-config (beside the
    working folder when there is none). Raises :class:`UpdateError` on any failure.
    """
    if not repo_url or not final_repo_name or not branch:
        raise UpdateError(
            "download_github_repo needs repo_url, final_repo_name and branch; got "
            f"{repo_url!r}, {final_repo_name!r}, {branch!r}"
        )
    target = _target(final_repo_name)
    reporter = initialise_data_task("download_github_repo")
    with tempfile.TemporaryDirectory(prefix="duft-update-") as scratch:
        keep = Path(save_path).expanduser() if save_path else Path(scratch)
        keep.mkdir(parents=True, exist_ok=True)
        archive = keep / f"{target.name}-{branch.replace('/', '_')}.zip"
        _fetch(repo_url, branch, archive, reporter)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.incoming-", dir=target.parent))
        try:
            tree = _unpack(archive, staging, repo_url, branch)
            _check_replaceable(target, tree, repo_url, branch)
            if (target / user_dir).is_dir():
                shutil.rmtree(tree / user_dir, ignore_errors=True)
                shutil.copytree(target / user_dir, tree / user_dir, symlinks=True)
            backup = _swap(target, tree)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if backup is not None:
        _prune_backups(target)
        reporter.log_message(f"{target} updated from {repo_url} ({branch}); previous in {backup}")
    else:
        reporter.log_message(f"{target} created from {repo_url} ({branch})")
    return str(target)


def _target(final_repo_name: str) -> Path:
    path = Path(final_repo_name).expanduser()
    if path.is_absolute():
        return path
    if len(path.parts) != 1 or path.name in ("", ".", ".."):
        raise UpdateError(f"final_repo_name {final_repo_name!r} must be a folder name")
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    try:
        base = locate.find_config_dir(Path(main).parent if main else Path.cwd()).parent
    except locate.ConfigNotFoundError:
        base = Path.cwd()
    return base / path


def _fetch(repo_url: str, branch: str, archive: Path, reporter: DataTaskEnvironment) -> None:
    """The branch as a zip file at ``archive``: HTTP(S) download or ``git archive``."""
    if repo_url.startswith(("http://", "https://")):
        base = repo_url.rstrip("/").removesuffix(".git")
        _download(f"{base}/archive/refs/heads/{branch}.zip", archive, reporter)
        return
    import subprocess

    repo = Path(repo_url.removeprefix("file://")).expanduser()
    reporter.report_progress(0, 0, f"archiving branch {branch} of {repo}")
    result = subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=zip", "-o", str(archive), branch],
        capture_output=True,
        text=True,
        timeout=DOWNLOAD_TIMEOUT_S,
    )
    if result.returncode != 0:
        raise UpdateError(
            f"cannot take branch {branch!r} of the git repository {repo}: "
            f"{result.stderr.strip() or 'git archive failed'}; nothing was changed"
        )
    size = archive.stat().st_size
    reporter.report_progress(size, size, f"archived branch {branch} of {repo}")


def _download(url: str, archive: Path, reporter: DataTaskEnvironment) -> None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            with open(archive, "wb") as out:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    done += len(chunk)
                    reporter.report_progress(done, total, f"downloading {url}")
    except urllib.error.HTTPError as error:
        hint = " (is the branch name right?)" if error.code == 404 else ""
        raise UpdateError(
            f"downloading {url} failed: HTTP {error.code} {error.reason}{hint}; nothing was changed"
        ) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise UpdateError(f"downloading {url} failed: {reason}; nothing was changed") from None


def _unpack(archive: Path, staging: Path, repo_url: str, branch: str) -> Path:
    """Unpack into ``staging``; the tree is the archive's single top folder if it has one."""
    import zipfile

    unpacked = staging / "unpacked"
    try:
        with zipfile.ZipFile(archive) as zipped:
            broken = zipped.testzip()
            if broken is not None:
                raise zipfile.BadZipFile(f"{broken} is corrupt")
            zipped.extractall(unpacked)
    except (zipfile.BadZipFile, OSError) as error:
        raise UpdateError(
            f"the archive of branch {branch!r} of {repo_url} is not a readable zip file "
            f"({error}); nothing was changed"
        ) from None
    entries = list(unpacked.iterdir()) if unpacked.is_dir() else []
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else unpacked


def _check_replaceable(target: Path, tree: Path, repo_url: str, branch: str) -> None:
    """A duft-config folder is only replaced by another one."""
    if locate.is_config_dir(target) and not locate.is_config_dir(tree):
        raise UpdateError(
            f"branch {branch!r} of {repo_url} is no duft-config folder (it has no "
            f"system/data_tasks.json), so it does not replace {target}; nothing was changed"
        )


def _swap(target: Path, tree: Path) -> Path | None:
    """Rename the target to a backup and ``tree`` into its place; returns the backup."""
    if not target.exists():
        tree.rename(target)
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup = target.with_name(f"{target.name}{BACKUP_MARK}{stamp}")
    serial = 1
    while backup.exists():
        serial += 1
        backup = target.with_name(f"{target.name}{BACKUP_MARK}{stamp}-{serial}")
    target.rename(backup)
    try:
        tree.rename(target)
    except OSError as error:
        backup.rename(target)
        raise UpdateError(f"cannot move the new {target.name} into place: {error}") from None
    return backup


def _prune_backups(target: Path) -> None:
    backups = sorted(target.parent.glob(f"{target.name}{BACKUP_MARK}*"))  # by time stamp
    for old in backups[:-BACKUPS_KEPT]:
        shutil.rmtree(old, ignore_errors=True)
