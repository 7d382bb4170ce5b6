"""Who is this process, and is that one still alive: boot id, PID namespace, process start time.

With the host name, these name one process for good (a pid alone is reused: pid 1 in every
container, a unit started at boot), so a restarted daemon can tell its dead predecessor's tasks
and local jobs from a live process's.
"""
from __future__ import annotations

import os
from pathlib import Path


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def process_start(pid: int) -> str:
    """The kernel's start time of a live process in clock ticks since boot; "" when it is gone or
    a zombie (killed, not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state is field 3, starttime 22
    return "" if fields[0] == "Z" else fields[19]


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    return bool(process_start(pid))
