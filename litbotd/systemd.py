"""sd_notify without a dependency: one datagram to $NOTIFY_SOCKET (SPEC §7)."""
from __future__ import annotations

import os
import socket
import time


def _address() -> str | None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return None
    # A leading '@' names a socket in the abstract namespace.
    return "\0" + addr[1:] if addr.startswith("@") else addr


def notify(*fields: str) -> bool:
    """Send `READY=1`, `STATUS=…` and the like; False when not under systemd or the send failed."""
    addr = _address()
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto("\n".join(fields).encode(), addr)
        return True
    except OSError:
        return False


def reloading() -> bool:
    """RELOADING=1 with the monotonic timestamp systemd ≥ 253 asks for (Type=notify-reload)."""
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def watchdog_interval() -> float | None:
    """Half of WATCHDOG_USEC in seconds, when systemd asked for pings from this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None
