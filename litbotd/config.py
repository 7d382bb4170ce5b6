"""Configuration: schema, defaults, environment overrides, validation (SPEC §3). Pure.

Every error names the key. Reading the file, the environment and the secrets it names is
configfile.py's (`configfile.load`, `configfile.parse`); a new key goes in the dataclasses here.
"""
from __future__ import annotations

import dataclasses
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from . import durations, redaction

SECRET_KEYS = {"github.private_key", "github.webhook_secret", "github.client_secret"}


class ConfigError(ValueError):
    """A config problem; the message names the key."""


@dataclass(frozen=True)
class ServerConfig:
    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = 8080
    path: str = "/"
    max_body_bytes: int = 26_214_400
    public_url: str = ""            # where run pages and /dashboard are served (SPEC §9); "": no pages, details_url as before
    auth: str = "link"              # run pages: "link" (the URL holds the key) or "github" (GitHub sign-in)
    admin_users: tuple[str, ...] = ()   # GitHub logins allowed on /dashboard (with auth = "github")
    # Not a file key: the bearer token of /dashboard, from the credential litbotd-admin-token.
    admin_token: str = field(default="", repr=False)


@dataclass(frozen=True)
class GithubConfig:
    app_id: int = 0
    private_key_file: str = ""
    webhook_secret: str = field(default="", repr=False)
    api_url: str = "https://api.github.com"
    command_prefix: str = "/litci"
    trusted_associations: tuple[str, ...] = ("OWNER", "MEMBER", "COLLABORATOR")
    redeliver_interval: float = 300.0
    redeliver_window: float = 72 * 3600.0
    client_id: str = ""             # the App's OAuth client id, for server.auth = "github"
    client_secret: str = field(default="", repr=False)   # prefer the credential github-client-secret
    # Not a file key: the PEM text, from GH_PRIVATE_KEY, the credentials directory
    # or read from private_key_file at load time.
    private_key: str = field(default="", repr=False)


@dataclass(frozen=True)
class RedisConfig:
    url: str = "redis://localhost:6379/0"
    queue: str = "bot_queue"
    sentinels: tuple[str, ...] = ()   # "host:port" of Redis Sentinels: find the primary through them
    sentinel_master: str = "mymaster"
    # With sentinels: a webhook is answered only once a replica has it, even when none is connected
    # (false: once the connected replicas have it; with none connected, at once, and /healthz says so).
    require_replica: bool = False


@dataclass(frozen=True)
class WorkersConfig:
    count: int = 4
    heartbeat_interval: float = 2.0
    lease_timeout: float = 10.0
    task_timeout: float = 600.0
    max_attempts: int = 5
    retry_backoff: float = 2.0
    retry_backoff_max: float = 300.0
    shutdown_grace: float = 30.0


@dataclass(frozen=True)
class LightningConfig:
    teamspace: str = ""
    default_machine: str = "CPU"
    default_image: str = "python:3.12-slim"


@dataclass(frozen=True)
class LocalConfig:
    workdir: str = "/var/lib/litbotd/jobs"
    max_parallel: int = 2
    sandbox: bool = True            # bubblewrap; false = trusted code only
    network: str = "isolated"       # "isolated" (outbound only, slirp4netns), "none", "host" (unsafe)
    writable_paths: tuple[str, ...] = ()
    max_log_bytes: int = 10 * 1024 * 1024
    keep: float = 24 * 3600.0


@dataclass(frozen=True)
class JobsConfig:
    backend: str = "lightning"
    poll_interval: float = 10.0       # Lightning: a running job's state is read this often
    poll_interval_max: float = 30.0   # the longest wait between reads (a pending job backs off to it)
    queue_timeout: float = 3600.0
    default_timeout: float = 3600.0
    cancel_superseded: bool = True
    infra_retries: int = 2          # SPEC §11: a run lost to the infrastructure is retried this many times
    lightning: LightningConfig = LightningConfig()
    local: LocalConfig = LocalConfig()


@dataclass(frozen=True)
class ReportConfig:
    comment: bool = True
    log_tail_lines: int = 200
    keep_logs: float = 30 * 24 * 3600.0   # a finished run's page and whole log are kept this long
    logs_dir: str = ""              # where: "" = $STATE_DIRECTORY/runs, else /var/lib/litbotd/runs


@dataclass(frozen=True)
class SecretsConfig:
    file: str = ""                  # the job secrets store (jobsecrets.py); "": the credential litbotd-secrets
    forks: str = "never"            # "never" | "approved": a fork PR's runs after /litci ok-to-test on that SHA


@dataclass(frozen=True)
class LimitsConfig:
    """[limits] (SPEC §11); 0 or empty: no limit. limits.py decides with it."""
    max_parallel_per_repo: int = 0
    max_parallel_per_machine: dict[str, int] = field(default_factory=dict)
    per_pr_usd: float = 0.0
    per_repo_day_usd: float = 0.0
    untrusted_machines: tuple[str, ...] = ("CPU",)
    prices: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "auto"


@dataclass(frozen=True)
class Config:
    server: ServerConfig = ServerConfig()
    github: GithubConfig = GithubConfig()
    redis: RedisConfig = RedisConfig()
    workers: WorkersConfig = WorkersConfig()
    jobs: JobsConfig = JobsConfig()
    report: ReportConfig = ReportConfig()
    secrets: SecretsConfig = SecretsConfig()
    limits: LimitsConfig = LimitsConfig()
    log: LogConfig = LogConfig()
    source: str = ""  # where it was read from, for messages


DURATION_KEYS = {
    "github.redeliver_interval", "github.redeliver_window",
    "workers.heartbeat_interval", "workers.lease_timeout", "workers.task_timeout", "workers.retry_backoff",
    "workers.retry_backoff_max", "workers.shutdown_grace",
    "jobs.poll_interval", "jobs.poll_interval_max", "jobs.queue_timeout", "jobs.default_timeout",
    "jobs.local.keep", "report.keep_logs",
}


def parse_duration(value: Any, key: str = "duration") -> float:
    """'15s', '5m', '2h', '1d', '250ms', '1h30m' (durations.py) or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration like '15s' or a number of seconds, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (parsed := durations.seconds(value, bare_unit="s")) is not None:
        seconds = parsed
    else:
        raise ConfigError(f"{key}: expected a duration like '15s', '5m', '2h' or a number of seconds, got {value!r}")
    if seconds < 0:
        raise ConfigError(f"{key}: a duration cannot be negative, got {value!r}")
    return seconds


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Check one leaf value against the type of its default."""
    if key in DURATION_KEYS:
        return parse_duration(value, key)
    if isinstance(default, dict):
        return _coerce_map(key, value)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            # Never echo a secret's value, even a mistyped one.
            shown = f"a {type(value).__name__}" if key in SECRET_KEYS else repr(value)
            raise ConfigError(f"{key}: expected a string, got {shown}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
        return tuple(value)
    raise ConfigError(f"{key}: unsupported value {value!r}")  # pragma: no cover


# Tables of machine name -> number, and the type of their values.
MAP_KEYS = {"limits.max_parallel_per_machine": int, "limits.prices": float}


def _coerce_map(key: str, value: Any) -> dict[str, Any]:
    kind = MAP_KEYS[key]
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a table like {{L4 = 2}}, got {value!r}")
    out: dict[str, Any] = {}
    for name, v in value.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
            raise ConfigError(f"{key}.{name}: expected {'an integer' if kind is int else 'a number'}, got {v!r}")
        if v < 0 or v != v:
            raise ConfigError(f"{key}.{name}: must not be negative, got {v!r}")
        out[str(name)] = kind(v)
    return out


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix}: expected a table, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hidden = {"private_key", "source", "admin_token"}
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in fields or name in hidden:
            raise ConfigError(f"{key}: unknown key")
        f = fields[name]
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, key)
        else:
            kwargs[name] = _coerce(key, value, default)
    return cls(**kwargs)


def _validate(cfg: Config) -> None:
    def bad(key: str, why: str) -> None:
        raise ConfigError(f"{key}: {why}")

    if not 0 <= cfg.server.port <= 65535:
        bad("server.port", f"must be between 0 and 65535, got {cfg.server.port}")
    if not cfg.server.path.startswith("/"):
        bad("server.path", f"must start with '/', got {cfg.server.path!r}")
    if cfg.server.max_body_bytes < 1024:
        bad("server.max_body_bytes", f"must be at least 1024, got {cfg.server.max_body_bytes}")
    if cfg.server.public_url and not re.match(r"^https?://[^/\s?#]+(/[^\s?#]*)?$", cfg.server.public_url):
        bad("server.public_url", f"must be an http(s) URL without query or fragment, got {cfg.server.public_url!r}")
    if cfg.server.auth not in ("link", "github"):
        bad("server.auth", f"must be 'link' or 'github', got {cfg.server.auth!r}")
    for i, login in enumerate(cfg.server.admin_users):
        if not re.match(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$", login):
            bad(f"server.admin_users[{i}]", f"not a GitHub login: {login!r}")
    if cfg.server.auth == "github":
        if not cfg.server.public_url:
            bad("server.auth", "'github' needs server.public_url (GitHub sends the user back to it)")
        if not cfg.github.client_id:
            bad("github.client_id", "must be set for server.auth = 'github' (the App's OAuth client id)")
        if not cfg.github.client_secret:
            bad("github.client_secret", "must be set for server.auth = 'github' "
                                        "(the credential github-client-secret, or the key)")
    if cfg.github.app_id < 0:
        bad("github.app_id", f"must not be negative, got {cfg.github.app_id}")
    if not re.match(r"^https?://[^/\s]+", cfg.github.api_url):
        bad("github.api_url", f"must be an http(s) URL, got {cfg.github.api_url!r}")
    if not cfg.github.command_prefix.strip():
        bad("github.command_prefix", "must not be empty")
    if not cfg.redis.url.startswith(("redis://", "rediss://", "unix://")):
        bad("redis.url", f"must start with redis://, rediss:// or unix://, got {cfg.redis.url!r}")
    for i, addr in enumerate(cfg.redis.sentinels):
        host, _, port = addr.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) <= 65535:
            bad(f"redis.sentinels[{i}]", f"expected 'host:port', got {addr!r}")
    if cfg.redis.sentinels and not cfg.redis.sentinel_master.strip():
        bad("redis.sentinel_master", "must name the Sentinel service when redis.sentinels is set")
    if not cfg.redis.queue or any(c.isspace() for c in cfg.redis.queue):
        bad("redis.queue", f"must be a non-empty name without spaces, got {cfg.redis.queue!r}")
    w = cfg.workers
    if not 0 <= w.count <= 1024:
        bad("workers.count", f"must be between 0 and 1024, got {w.count}")
    if w.heartbeat_interval <= 0:
        bad("workers.heartbeat_interval", "must be more than 0")
    if w.lease_timeout <= w.heartbeat_interval:
        bad("workers.lease_timeout", f"must be longer than workers.heartbeat_interval ({w.heartbeat_interval:g}s)")
    if w.task_timeout <= 0:
        bad("workers.task_timeout", "must be more than 0")
    if w.max_attempts < 1:
        bad("workers.max_attempts", f"must be at least 1, got {w.max_attempts}")
    if w.retry_backoff_max < w.retry_backoff:
        bad("workers.retry_backoff_max", "must not be shorter than workers.retry_backoff")
    j = cfg.jobs
    if j.backend not in ("lightning", "local"):
        bad("jobs.backend", f"must be 'lightning' or 'local', got {j.backend!r}")
    if j.poll_interval <= 0:
        bad("jobs.poll_interval", "must be more than 0")
    if j.poll_interval_max < j.poll_interval:
        bad("jobs.poll_interval_max", "must not be shorter than jobs.poll_interval")
    if j.default_timeout <= 0:
        bad("jobs.default_timeout", "must be more than 0")
    if j.queue_timeout <= 0:
        bad("jobs.queue_timeout", "must be more than 0")
    if not 0 <= j.infra_retries <= 10:
        bad("jobs.infra_retries", f"must be between 0 and 10, got {j.infra_retries}")
    if j.lightning.teamspace and j.lightning.teamspace.count("/") != 1:
        bad("jobs.lightning.teamspace", f"must look like 'owner/teamspace', got {j.lightning.teamspace!r}")
    if j.local.max_parallel < 1:
        bad("jobs.local.max_parallel", f"must be at least 1, got {j.local.max_parallel}")
    if j.local.network not in ("isolated", "none", "host"):
        bad("jobs.local.network", f"must be 'isolated', 'none' or 'host', got {j.local.network!r}")
    for p in j.local.writable_paths:
        if not p.startswith("/") or p.rstrip("/") in ("", "/usr", "/etc", "/proc", "/dev"):
            bad("jobs.local.writable_paths", f"must be absolute paths outside /usr, /etc, /proc and /dev, got {p!r}")
    if j.local.max_log_bytes < 65536:
        bad("jobs.local.max_log_bytes", f"must be at least 65536, got {j.local.max_log_bytes}")
    if j.local.keep <= 0:
        bad("jobs.local.keep", "must be more than 0")
    lim = cfg.limits
    for key in ("max_parallel_per_repo", "per_pr_usd", "per_repo_day_usd"):
        if getattr(lim, key) < 0:
            bad(f"limits.{key}", f"must not be negative (0: no limit), got {getattr(lim, key)!r}")
    if cfg.report.log_tail_lines < 1:
        bad("report.log_tail_lines", f"must be at least 1, got {cfg.report.log_tail_lines}")
    if cfg.report.keep_logs <= 0:
        bad("report.keep_logs", "must be more than 0")
    if cfg.report.logs_dir and not cfg.report.logs_dir.startswith("/"):
        bad("report.logs_dir", f"must be an absolute path, got {cfg.report.logs_dir!r}")
    if cfg.secrets.forks not in ("never", "approved"):
        bad("secrets.forks", f"must be 'never' or 'approved', got {cfg.secrets.forks!r}")
    if cfg.secrets.file and not cfg.secrets.file.startswith("/"):
        bad("secrets.file", f"must be an absolute path, got {cfg.secrets.file!r}")
    if cfg.log.level.lower() not in ("debug", "info", "warning", "error", "critical"):
        bad("log.level", f"must be one of debug, info, warning, error, critical, got {cfg.log.level!r}")
    if cfg.log.format not in ("auto", "text", "journal", "json"):
        bad("log.format", f"must be one of auto, text, journal, json, got {cfg.log.format!r}")


def _env_overrides(env: Mapping[str, str]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Returns (file-shaped overrides, secrets). Env values are strings: coerce the non-string ones."""
    over: dict[str, dict[str, Any]] = {}
    secrets: dict[str, str] = {}
    if "GH_APP_ID" in env:
        raw = env["GH_APP_ID"].strip()
        if not raw.isdigit():
            raise ConfigError(f"github.app_id (from GH_APP_ID): expected an integer, got {raw!r}")
        over.setdefault("github", {})["app_id"] = int(raw)
    if env.get("GH_PRIVATE_KEY_FILE"):
        over.setdefault("github", {})["private_key_file"] = env["GH_PRIVATE_KEY_FILE"]
    if env.get("GH_WEBHOOK_SECRET"):
        secrets["webhook_secret"] = env["GH_WEBHOOK_SECRET"]
    if env.get("GH_PRIVATE_KEY"):
        secrets["private_key"] = env["GH_PRIVATE_KEY"]
    if env.get("REDIS_URL"):
        over.setdefault("redis", {})["url"] = env["REDIS_URL"]
    return over, secrets


# read_secret(path, key, required): the file's text; None when it does not exist and is not
# required; ConfigError naming `key` when it cannot be read (configfile.read_secret).
ReadSecret = Callable[[str, str, bool], "str | None"]


def build(data: Mapping[str, Any], env: Mapping[str, str], source: str, read_secret: ReadSecret) -> Config:
    """A validated Config from a parsed TOML mapping plus the environment given. The files it
    names (the key, systemd credentials) are read through `read_secret`: configfile.parse is the
    version that reads them (and os.environ)."""
    merged: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    over, secrets = _env_overrides(env)
    for section, values in over.items():
        if not isinstance(merged.get(section, {}), Mapping):
            raise ConfigError(f"{section}: expected a table")
        merged.setdefault(section, {}).update(values)
    cfg: Config = _build(Config, merged, "")
    gh = cfg.github
    creds = env.get("CREDENTIALS_DIRECTORY")
    webhook_secret = secrets.get("webhook_secret", "")
    private_key = secrets.get("private_key", "")
    if creds and not webhook_secret:
        webhook_secret = (read_secret(posixpath.join(creds, "webhook-secret"), "github.webhook_secret", False)
                          or "").strip()
    if creds and not private_key:
        private_key = read_secret(posixpath.join(creds, "github-app.pem"), "github.private_key_file", False) or ""
    if not private_key and gh.private_key_file:
        private_key = read_secret(gh.private_key_file, "github.private_key_file", True) or ""
    client_secret = secrets.get("client_secret", "")
    if creds:
        client_secret = (read_secret(posixpath.join(creds, "github-client-secret"), "github.client_secret", False)
                         or "").strip() or client_secret
    admin_token = ""
    if creds:
        admin_token = (read_secret(posixpath.join(creds, "litbotd-admin-token"), "server.admin_token", False)
                       or "").strip()
    if private_key and "PRIVATE KEY-----" not in private_key:
        raise ConfigError("github.private_key_file: not a PEM private key (no 'PRIVATE KEY' header)")
    cfg = dataclasses.replace(
        cfg,
        github=dataclasses.replace(gh, webhook_secret=webhook_secret or gh.webhook_secret, private_key=private_key,
                                   client_secret=client_secret or gh.client_secret),
        server=dataclasses.replace(cfg.server, admin_token=admin_token),
        source=source,
    )
    _validate(cfg)
    return cfg


def logs_dir(cfg: Config, env: Mapping[str, str]) -> str:
    """Where run pages' logs are kept: report.logs_dir, else $STATE_DIRECTORY/runs, else
    /var/lib/litbotd/runs."""
    if cfg.report.logs_dir:
        return cfg.report.logs_dir
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    return (state or "/var/lib/litbotd").rstrip("/") + "/runs"


def secrets_of(cfg: Config) -> list[str]:
    """Every secret value in the config, for log scrubbing."""
    return [s for s in (cfg.github.webhook_secret, cfg.github.private_key, cfg.github.client_secret,
                        cfg.server.admin_token) if s]


def to_dict(cfg: Config, mask: bool = True) -> dict[str, Any]:
    """The effective config as nested dicts, secrets masked (for check-config)."""
    out = dataclasses.asdict(cfg)
    out.pop("source", None)
    gh = out["github"]
    for name in ("webhook_secret", "private_key", "client_secret"):
        if mask:
            gh[name] = "***" if gh[name] else "(not set)"
    out["server"].pop("admin_token")  # not a file key (the credential litbotd-admin-token); never shown
    if mask:  # redis://:PASSWORD@host
        out["redis"]["url"] = redaction.mask_url(out["redis"]["url"])
    return out


def render_toml(d: Mapping[str, Any], prefix: str = "") -> str:
    """A small TOML writer for check-config output."""
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    for k, v in d.items():
        if isinstance(v, Mapping) and f"{prefix}{k}" not in MAP_KEYS:
            tables.append((f"{prefix}{k}", v))
        elif isinstance(v, Mapping):  # an inline table: {L4 = 2}
            inner = ", ".join(f"{_toml_key(n)} = {_toml_value(x, '')}" for n, x in v.items())
            lines.append(f"{k} = {{{inner}}}")
        else:
            lines.append(f"{k} = {_toml_value(v, f'{prefix}{k}')}")
    out = "\n".join(lines)
    for name, table in tables:
        body = render_toml(table, f"{name}.")
        out += f"\n\n[{name}]\n{body}" if body else ""
    return out.strip("\n")


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _toml_value(name, "")


def _toml_value(v: Any, key: str = "") -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and key not in DURATION_KEYS:
        return repr(v)
    if isinstance(v, float) and v.is_integer():
        return f'"{int(v)}s"'
    if isinstance(v, float):
        return f'"{v:g}s"'
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x, "") for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
