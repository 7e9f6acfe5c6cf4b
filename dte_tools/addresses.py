"""Whether a host name or address stays on this machine (the rule for every bind and dial,
the daemon's and the bridge's alike)."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (``[v6]`` brackets allowed)."""
    bare = host.strip("[]")
    if bare.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def hostname(netloc: str) -> str:
    """``host`` of ``host``, ``host:port``, ``[v6]`` or ``[v6]:port``, lowercased."""
    if netloc.startswith("["):
        return netloc[1:].split("]", 1)[0].lower()
    return (netloc.split(":", 1)[0] if netloc.count(":") == 1 else netloc).lower()
