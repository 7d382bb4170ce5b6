"""Reading the configuration: the file, the environment and the secrets they name (SPEC §2, §3).

The adapter in front of config.py (the pure schema and validation): `load` is what every command
calls; `parse` builds a Config from an already parsed mapping, reading the key file and systemd
credentials it names, and os.environ unless `env` is given.
"""
from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Mapping

from . import jobsecrets
from .config import Config, ConfigError, build

DEFAULT_PATH = "/etc/litbotd/litbotd.toml"


def read_secret(path: str, key: str, required: bool) -> str | None:
    """A secret file's text; None when it is optional and absent. ConfigError names `key`."""
    if not required and not os.path.exists(path):
        return None
    try:
        return Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {path}: {e.strerror or e}") from None


def resolve_path(explicit: str | None, env: Mapping[str, str]) -> str | None:
    """-c/--config, else $LITBOTD_CONFIG, else /etc/litbotd/litbotd.toml when it exists (SPEC §2)."""
    if explicit:
        return explicit
    if env.get("LITBOTD_CONFIG"):
        return env["LITBOTD_CONFIG"]
    if os.path.exists(DEFAULT_PATH):
        return DEFAULT_PATH
    return None


def parse(data: Mapping[str, Any], env: Mapping[str, str] | None = None, source: str = "") -> Config:
    """Build a validated Config from a parsed TOML mapping plus the environment."""
    return build(data, os.environ if env is None else env, source, read_secret)


def load(path: str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the config the way every command does: file (if any), then environment overrides."""
    env = os.environ if env is None else env
    path = resolve_path(path, env)
    if path is None:
        return parse({}, env, source="built-in defaults + environment")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path}: invalid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror or e}") from None
    return parse(data, env, source=path)


def secret_paths(cfg: Config, env: Mapping[str, str] | None = None) -> list[str]:
    """The files a job must not read, as absolute paths: the App key file, the systemd credentials
    directory, the config file itself and the job secrets file (the local sandbox masks them
    should they sit under a folder it shows, such as /etc)."""
    env = os.environ if env is None else env
    source = cfg.source if cfg.source and os.path.isfile(cfg.source) else ""
    return [os.path.abspath(p) for p in (cfg.github.private_key_file, env.get("CREDENTIALS_DIRECTORY"), source,
                                         cfg.secrets.file) if p]


def load_redis_only(path: str | None = None, env: Mapping[str, str] | None = None) -> tuple[Config, str | None]:
    """For `status`, `dead` and `replay`, which need only [redis]: the full config when it loads,
    else defaults plus the file's [redis] (and REDIS_URL), with the error that was set aside."""
    env = os.environ if env is None else env
    try:
        return load(path, env), None
    except ConfigError as e:
        problem = str(e)
    path = resolve_path(path, env)
    data: Any = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError):
            data = {}  # unreadable as a whole: [redis] comes from the environment or the defaults
    only_redis = {k: v for k, v in env.items() if k == "REDIS_URL"}
    return parse({"redis": data.get("redis", {})}, only_redis, source=f"[redis] of {path or 'defaults'}"), problem


# -- the job secrets store (jobsecrets.py) ----------------------------------------------------------
def secrets_path(file: str, env: Mapping[str, str] | None = None) -> str | None:
    """Where the job secrets store is: `secrets.file` when set, else the credential
    litbotd-secrets when systemd loaded one, else nowhere (no job gets a secret)."""
    env = os.environ if env is None else env
    if file:
        return file
    creds = env.get("CREDENTIALS_DIRECTORY")
    if creds and os.path.exists(os.path.join(creds, jobsecrets.CREDENTIAL)):
        return os.path.join(creds, jobsecrets.CREDENTIAL)
    return None


def load_secrets(file: str, env: Mapping[str, str] | None = None) -> jobsecrets.Store:
    """The job secrets store (the empty store when there is none). A file other users may read
    is refused: it holds every token the jobs get. SecretsError names the file and the key."""
    path = secrets_path(file, env)
    if path is None:
        return jobsecrets.EMPTY
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            raw = f.read()
    except OSError as e:
        raise jobsecrets.SecretsError(f"secrets file {path}: {e.strerror or type(e).__name__}") from None
    if mode & 0o007:
        raise jobsecrets.SecretsError(f"secrets file {path}: readable by other users (mode {mode & 0o777:o}): "
                                      "chmod o-rwx it")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise jobsecrets.SecretsError(f"secrets file {path}: not UTF-8 text") from None
    return jobsecrets.loads(text, f"secrets file {path}")
