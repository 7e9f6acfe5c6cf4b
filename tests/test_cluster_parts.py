"""The parts of ``--launcher dask`` that need no cluster: the task folder's bundle, the
scheduler address rules and where the launcher's settings come from."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from duftd.cluster import bundle
from duftd.cluster.connect import DaskSettings, check_scheduler, dask_settings
from duftd.cluster.relay import DaemonAddress, Relay
from duftd.errors import ConfigError
from duftd.pipeline import RunChannel


def test_pack_is_reproducible_and_leaves_out_caches(tmp_path: Path) -> None:
    """The same content packs to the same digest (times do not count); __pycache__ and a
    link out of the folder are left out; it unpacks once under its digest, and a damaged
    bundle is refused."""
    folder = tmp_path / "data_tasks"
    (folder / "__pycache__").mkdir(parents=True)
    (folder / "__pycache__" / "x.pyc").write_bytes(b"junk")
    (folder / "a.py").write_text("print(1)\n")
    (folder / "lib").mkdir()
    (folder / "lib" / "helper.py").write_text("VALUE = 1\n")
    (tmp_path / "secret.txt").write_text("outside")
    (folder / "out.txt").symlink_to(tmp_path / "secret.txt")
    first = bundle.pack(folder)
    os.utime(folder / "a.py", (1, 1))
    assert bundle.pack(folder).digest == first.digest
    cache = tmp_path / "cache"
    unpacked = bundle.unpack(first.digest, first.data, cache)
    assert unpacked == cache / first.digest
    assert sorted(p.relative_to(unpacked).as_posix() for p in unpacked.rglob("*.py")) == [
        "a.py",
        "lib/helper.py",
    ]
    assert not (unpacked / "out.txt").exists()
    (unpacked / "a.py").write_text("changed")  # a second unpack finds it there: not redone
    assert bundle.unpack(first.digest, first.data, cache).joinpath("a.py").read_text() == "changed"
    with pytest.raises(bundle.BundleError, match="damaged"):
        bundle.unpack("0" * 64, first.data, cache)


@pytest.mark.parametrize(
    ("address", "insecure", "refused"),
    [
        ("tls://10.0.0.5:8786", False, None),
        ("tcp://127.0.0.1:8786", False, None),
        ("localhost:8786", False, None),
        ("tcp://10.0.0.5:8786", False, "not on this machine and not tls://"),
        ("10.0.0.5:8786", False, "not on this machine and not tls://"),
        ("tcp://10.0.0.5:8786", True, None),
        ("ucx://10.0.0.5:8786", False, "no scheduler address"),
        ("tls://:8786", False, "no scheduler address"),
        ("tls://host:port", False, "bad port"),
    ],
)
def test_scheduler_addresses(address: str, insecure: bool, refused: str | None) -> None:
    """A scheduler off this machine must be tls:// unless --dask-insecure; an address Dask
    cannot use is refused with what to write instead."""
    settings = DaskSettings(address, insecure=insecure)
    if refused is None:
        check_scheduler(settings)
    else:
        with pytest.raises(ConfigError, match=refused):
            check_scheduler(settings)


def test_launcher_from_flags_or_config_settings() -> None:
    """The flags win; else user/config.json's settings choose the launcher and scheduler;
    an unknown launcher or a missing scheduler is refused naming the setting."""
    flags = DaskSettings("tls://10.0.0.5:8786")
    assert dask_settings(None, None, {}) is None
    assert dask_settings("local", flags, {"launcher": "dask"}) is None
    assert dask_settings("dask", flags, {}) == flags
    from_config = {"launcher": "dask", "daskScheduler": "tcp://10.0.0.5:8786", "daskInsecure": True}
    assert dask_settings(None, None, from_config) == DaskSettings("tcp://10.0.0.5:8786", True)
    with pytest.raises(ConfigError, match="not on this machine"):
        dask_settings(None, None, {**from_config, "daskInsecure": "yes"})
    with pytest.raises(ConfigError, match="daskScheduler"):
        dask_settings("dask", None, {})
    with pytest.raises(ConfigError, match="'slurm' is unknown"):
        dask_settings(None, None, {"launcher": "slurm"})


async def test_the_relay_finishes_when_the_last_lines_arrive_as_the_worker_ends() -> None:
    """The relay's sender stops when told to, even when the worker's last lines reach the
    queue in the same moment (Python 3.11's wait_for swallowed a cancel then, and the run
    never finished); the line is delivered once, then the last batch. Only the delivery
    to duftd is stood in for: the timing needs one loop turn, which no daemon can give."""
    relay = Relay(1, b"t" * 32, DaemonAddress("tcp://127.0.0.1:9", "k", "p", "s"))
    batches: list[tuple[list[list[object]], bool]] = []

    async def deliver(events: list[list[object]], last: bool) -> bool:
        batches.append((events, last))
        return True

    relay._deliver = deliver  # type: ignore[method-assign]
    sender = asyncio.create_task(relay._send())
    await asyncio.sleep(0)  # wait-ok: one loop turn, so the sender is waiting on the queue
    relay._queue.emit(RunChannel(1, "T"), "log", {"level": "info", "message": "last"}, 1.0)
    try:
        await asyncio.wait_for(relay._finish(sender), 5)
    finally:
        relay._context.destroy(linger=0)
    # No heartbeat between them: a sender that missed being stopped sends one each 0.5 s.
    assert batches == [([["log", 1.0, {"level": "info", "message": "last"}]], False), ([], True)]
    assert sender.done()
