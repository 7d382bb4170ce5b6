"""Job backends: where CI jobs run (local machine or Lightning AI). See base.py for the interface."""
from __future__ import annotations

import os
from typing import Sequence

from ..config import JobsConfig
from .base import Backend, BackendError, JobNotFound, JobSpec, JobStatus, Price
from .lightning import machine_names

__all__ = ["Backend", "BackendError", "JobNotFound", "JobSpec", "JobStatus", "Price", "check", "machine_names",
           "make_backend"]


def check(jobs: JobsConfig) -> None:
    """Offline checks `litbotd run` and check-config make before anything starts: BackendError
    when the local backend's sandbox cannot work on this machine (never run jobs unsandboxed)."""
    if jobs.backend == "local" and jobs.local.sandbox:
        from .sandbox import problem

        if why := problem(jobs.local.network):
            raise BackendError(why)
        for path in jobs.local.writable_paths:
            if not os.path.isdir(path):
                raise BackendError(f"jobs.local.writable_paths: {path} is not an existing directory")


def make_backend(jobs: JobsConfig, hidden: Sequence[str] = ()) -> Backend:
    """The backend `[jobs] backend` names. Lightning checks its teamspace and credentials here.
    `hidden`: what the local sandbox masks should it sit under /etc or /usr (the config file, the
    App key, the credentials: configfile.secret_paths)."""
    if jobs.backend == "local":
        from .local import LocalBackend

        check(jobs)
        loc = jobs.local
        return LocalBackend(loc.workdir, loc.max_parallel, sandbox=loc.sandbox, network=loc.network,
                            writable_paths=loc.writable_paths, hidden=list(hidden), max_log_bytes=loc.max_log_bytes,
                            keep=loc.keep)
    if jobs.backend == "lightning":
        from .lightning import LightningBackend

        return LightningBackend(jobs.lightning.teamspace)
    raise BackendError(f"jobs.backend: unknown backend {jobs.backend!r}")
