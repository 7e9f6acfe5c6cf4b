"""``duftd``: the daemon's command line. The event loop is created here and nowhere else."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

from dte_tools import locate
from duftd.cluster.connect import DaskSettings
from duftd.errors import DuftError
from duftd.logs import configure
from duftd.runs.launchers import LAUNCHERS
from duftd.server import DEFAULT_HOST, DEFAULT_PORT, DaemonOptions, run_daemon

# How long a thread holding the GIL keeps it while another waits (Python's default: 5 ms).
# The store's threads need it back after every SQLite call; behind a loop busy with an
# event flood each hand-over waited up to the full interval.
SWITCH_INTERVAL_S = 0.0005


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="duftd", description="The DUFT Data Task Engine daemon.")
    parser.add_argument(
        "--config",
        type=Path,
        help="duft-config folder (default: $DUFT_CONFIG_DIR or the embedded one)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="run store and connection file (default: $DUFT_STATE_DIR or ./.duftd)",
    )
    parser.add_argument(
        "--host",
        help=f"also listen on tcp at this address, under CURVE (default {DEFAULT_HOST} when "
        "--port or --curve-dir is given; without any of them duftd listens on ipc only)",
    )
    parser.add_argument(
        "--port",
        type=int,
        help=f"also listen on tcp under CURVE: control on this port, ingest and events on the "
        f"next two; 0: any free (default {DEFAULT_PORT} when --host or --curve-dir is given)",
    )
    parser.add_argument(
        "--max-concurrent",
        type=int,
        default=os.cpu_count() or 2,
        help="runs allowed at once; the rest wait in order (default: number of CPUs)",
    )
    parser.add_argument(
        "--cancel-grace", type=float, default=5.0, help="seconds between SIGTERM and SIGKILL"
    )
    parser.add_argument(
        "--retention-days",
        type=float,
        default=90.0,
        help="delete finished runs older than this (0: keep)",
    )
    parser.add_argument(
        "--retention-runs",
        type=int,
        default=500,
        help="keep at most this many runs per task (0: all)",
    )
    parser.add_argument(
        "--curve-dir",
        type=Path,
        help="listen on tcp under CURVE with the keys in this folder (server.key_secret, "
        "clients/*.key) instead of keys made at start; required for a non-loopback --host",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--containment",
        choices=["auto", "subreaper"],
        default="auto",
        help="how a run's processes are kept together so they all end with it: auto (a "
        "cgroup per worker where the machine allows, else a subreaper launcher) or subreaper",
    )
    parser.add_argument(
        "--no-spares",
        action="store_true",
        help="start every worker cold instead of keeping a warm one of each kind ready",
    )
    parser.add_argument(
        "--spare-burst",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="while runs of a kind (script or notebook) start within SECONDS of each other, "
        "keep a second warm worker of that kind and stop it after SECONDS without one; 0: "
        "one spare of each kind only (default: %(default)s)",
    )
    parser.add_argument(
        "--strict-connections",
        action="store_true",
        help="refuse a task a connection its dataConnections do not list (default: hand it "
        "over with a warning, as DUFT does; also the strictConnections setting in "
        "user/config.json)",
    )
    cluster = parser.add_argument_group("runs on a Dask cluster (README: Running on a cluster)")
    cluster.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        help="where runs execute: local worker processes, or a Dask cluster (default: the "
        "'launcher' setting in user/config.json, else local)",
    )
    cluster.add_argument(
        "--dask-scheduler",
        metavar="ADDR",
        help="the cluster's scheduler, tls://HOST:PORT (tcp:// only on this machine)",
    )
    cluster.add_argument(
        "--dask-insecure",
        action="store_true",
        help="allow a tcp:// scheduler off this machine (a network that is private already)",
    )
    for name in ("ca", "cert", "key"):
        cluster.add_argument(
            f"--dask-tls-{name}",
            type=Path,
            help="TLS file for the scheduler connection (default: Dask's own configuration)",
        )
    cluster.add_argument(
        "--dask-data-dir",
        help="a data folder every Dask worker shares (default: one per run on its worker)",
    )
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> DaemonOptions:
    return DaemonOptions(
        config_dir=(args.config or locate.default_config_dir()).resolve(),
        state_dir=(args.state_dir or locate.default_state_dir()).resolve(),
        host=args.host,
        port=args.port,
        max_concurrent=max(1, args.max_concurrent),
        cancel_grace_s=args.cancel_grace,
        retention_days=args.retention_days or None,
        retention_runs=args.retention_runs or None,
        curve_dir=args.curve_dir,
        spares=not args.no_spares,
        spare_burst_s=max(0.0, args.spare_burst),
        containment=args.containment,
        strict_connections=args.strict_connections,
        launcher=args.launcher,
        dask=DaskSettings(
            args.dask_scheduler,
            args.dask_insecure,
            args.dask_tls_ca,
            args.dask_tls_cert,
            args.dask_tls_key,
        )
        if args.dask_scheduler
        else None,
        dask_data_dir=args.dask_data_dir,
    )


async def _main(options: DaemonOptions) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():  # a second Ctrl-C: stop waiting for a clean shutdown
            os._exit(130)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    await run_daemon(options, stop)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure(args.log_level)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        asyncio.run(_main(options_from(args)))
    except DuftError as error:
        print(f"duftd: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
