"""The offline checks `litbotd run` makes before it binds its port; `check-config` makes the same
ones (SPEC §2, §8). Each problem is one line naming the key or the backend, never a traceback."""
from __future__ import annotations

import asyncio
from typing import Mapping

from . import configfile, jobsecrets
from .config import Config


def key_problem(pem: str) -> str | None:
    """A GitHub App signs its JWTs with RS256: the key must be an RSA private key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except TypeError:
        return "github.private_key_file: the private key is encrypted with a passphrase; GitHub App keys are not"
    except Exception as e:  # ValueError, UnsupportedAlgorithm; cryptography's messages never include the key itself
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        return f"github.private_key_file: not a readable PEM private key ({reason[:200]})"
    if not isinstance(key, rsa.RSAPrivateKey):
        kind = type(key).__name__.lstrip("_").replace("PrivateKey", "").replace("EllipticCurve", "EC")
        return (f"github.private_key_file: an {kind or 'non-RSA'} key, but a GitHub App private key must be "
                "RSA (download one from the App's settings page)")
    return None


def backend_problem(cfg: Config) -> str | None:
    """Can the job backend be built: e.g. Lightning needs a teamspace and credentials."""
    if cfg.workers.count == 0:
        return None  # a listener-only process runs no jobs
    from . import configfile
    from .backends import BackendError, make_backend

    try:
        backend = make_backend(cfg.jobs, configfile.secret_paths(cfg))
    except BackendError as e:
        return f"jobs.backend = {cfg.jobs.backend!r} cannot start: {e}"
    asyncio.run(backend.close())
    return None


def secret_store(cfg: Config, env: Mapping[str, str] | None = None) -> tuple[jobsecrets.Store, str | None]:
    """The job secrets store the config points at, or the empty store and why it cannot be read
    (one line naming the file and the key, never a value)."""
    try:
        return configfile.load_secrets(cfg.secrets.file, env), None
    except jobsecrets.SecretsError as e:
        return jobsecrets.EMPTY, f"secrets.file: {e}"


def pages_problem(cfg: Config, env: Mapping[str, str] | None = None) -> str | None:
    """With server.public_url: the run pages' link key can be read, or made (nothing is made here).
    `env`: the process's environment unless given."""
    if not cfg.server.public_url:
        return None
    from .logstore import link_key_problem, logs_dir

    return link_key_problem(env, logs_dir(cfg, env))


def problems(cfg: Config, env: Mapping[str, str] | None = None) -> list[str]:
    """Everything that makes `litbotd run` refuse to start, as one line each."""
    out = []
    if not cfg.github.webhook_secret and cfg.server.enabled:
        out.append("github.webhook_secret: not set — refusing to start an unauthenticated webhook listener "
                   "(set GH_WEBHOOK_SECRET, the config key, or a systemd credential)")
    if cfg.github.private_key and (p := key_problem(cfg.github.private_key)):
        out.append(p)
    if p := backend_problem(cfg):
        out.append(p)
    if p := pages_problem(cfg, env):
        out.append(p)
    if p := secret_store(cfg, env)[1]:
        out.append(p)
    return out
