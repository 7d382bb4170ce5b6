"""Job backends: where CI jobs run (local machine or Lightning AI). See base.py for the interface."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Backend, BackendError, JobNotFound, JobSpec, JobStatus
from .lightning import machine_names

if TYPE_CHECKING:
    from litbotd.config import Config

__all__ = ["Backend", "BackendError", "JobNotFound", "JobSpec", "JobStatus", "machine_names", "make_backend"]


def make_backend(cfg: "Config") -> Backend:
    """The backend `[jobs] backend` names. Lightning checks its teamspace and credentials here."""
    if cfg.jobs.backend == "local":
        from .local import LocalBackend

        return LocalBackend(cfg.jobs.local.workdir, cfg.jobs.local.max_parallel)
    if cfg.jobs.backend == "lightning":
        from .lightning import LightningBackend

        return LightningBackend(cfg.jobs.lightning.teamspace)
    raise BackendError(f"jobs.backend: unknown backend {cfg.jobs.backend!r}")
