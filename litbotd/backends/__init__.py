"""Job backends: where CI jobs run (local machine or Lightning AI). See base.py for the interface."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .base import Backend, BackendError, JobNotFound, JobSpec, JobStatus
from .lightning import machine_names

if TYPE_CHECKING:
    from litbotd.config import Config

__all__ = ["Backend", "BackendError", "JobNotFound", "JobSpec", "JobStatus", "check", "machine_names", "make_backend"]


def check(cfg: "Config") -> None:
    """Offline checks `litbotd run` and check-config make before anything starts: BackendError
    when the local backend's sandbox cannot work on this machine (never run jobs unsandboxed)."""
    if cfg.jobs.backend == "local" and cfg.jobs.local.sandbox:
        from .sandbox import problem

        if why := problem(cfg.jobs.local.network):
            raise BackendError(why)
        for path in cfg.jobs.local.writable_paths:
            if not os.path.isdir(path):
                raise BackendError(f"jobs.local.writable_paths: {path} is not an existing directory")


def make_backend(cfg: "Config") -> Backend:
    """The backend `[jobs] backend` names. Lightning checks its teamspace and credentials here."""
    if cfg.jobs.backend == "local":
        from .local import LocalBackend

        check(cfg)
        loc = cfg.jobs.local
        # what the sandbox masks should it sit under /etc or /usr: the config file, key and credentials
        hidden = [os.path.abspath(p) for p in (cfg.github.private_key_file, os.environ.get("CREDENTIALS_DIRECTORY"),
                                               cfg.source if cfg.source and os.path.isfile(cfg.source) else "",
                                               cfg.secrets.file) if p]
        return LocalBackend(loc.workdir, loc.max_parallel, sandbox=loc.sandbox, network=loc.network,
                            writable_paths=loc.writable_paths, hidden=hidden, max_log_bytes=loc.max_log_bytes,
                            keep=loc.keep)
    if cfg.jobs.backend == "lightning":
        from .lightning import LightningBackend

        return LightningBackend(cfg.jobs.lightning.teamspace)
    raise BackendError(f"jobs.backend: unknown backend {cfg.jobs.backend!r}")
