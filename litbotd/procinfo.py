"""Who is this process, and is that one still alive: boot id, PID namespace, process start time.

With the host name, these name one process for good (a pid alone is reused: pid 1 in every
container, a unit started at boot), so a restarted daemon can tell its dead predecessor's tasks
and local jobs from a live process's.
"""
from __future__ import annotations

import os
import secrets
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


def identity(host: str) -> dict[str, str | int]:
    """Who this process start is, as recorded with each of its workers. `instance` is random per
    start, so worker ids never collide: not between two hosts with one name, not between a process
    and a predecessor that had the same pid."""
    pid = os.getpid()
    return {"host": host, "instance": secrets.token_hex(4), "pid": pid, "boot": boot_id(),
            "pidns": pid_namespace(), "pstart": process_start(pid)}


def provably_dead(info: dict, me: dict) -> bool:
    """True only for a process of this very machine and PID namespace that is gone: same host
    name, boot id and PID namespace, and its pid now runs nothing or a process that started at
    another time. Anything else — another machine (a different boot id may as well be another
    host with the same name as this host rebooted), another container, a record too old to say —
    is left to lease expiry, which never takes a live worker's tasks."""
    if info.get("instance") == me["instance"] or not info.get("pstart"):
        return False
    if any(info.get(k) != me[k] or not me[k] for k in ("host", "boot", "pidns")):
        return False
    return process_start(int(info.get("pid") or 0)) != info["pstart"]
