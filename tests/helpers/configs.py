"""The one config writer of the tests: `config_data` (a mapping, for configfile.parse or a Daemon in
this process) and `write_config` (the same as a TOML file, for a daemon or CLI subprocess).

The base is a daemon for tests: loopback listener on a free port, fast heartbeats and polls, the
local backend without its sandbox (tests about the sandbox say `jobs={"local": {"sandbox": True}}`),
no redelivery sweeps. Each keyword names a section whose keys override the base (tables merge:
`jobs={"local": {"max_parallel": 1}}` keeps the other local keys).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from litbotd.config import render_toml


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out.get(k) or {}, v) if isinstance(v, Mapping) else v
    return out


def config_data(redis_url: str, api_url: str = "", workdir: Path | None = None, **sections: Mapping[str, Any]
                ) -> dict[str, Any]:
    """The test config as a mapping. `api_url`: the GitHub stand-in (with app_id 1, the test App's);
    `workdir`: the local jobs'."""
    base: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "github": {"redeliver_interval": 0, **({"app_id": 1, "api_url": api_url} if api_url else {})},
        "redis": {"url": redis_url},
        "workers": {"count": 3, "heartbeat_interval": "0.5s", "lease_timeout": "3s", "retry_backoff": "0.2s",
                    "shutdown_grace": "5s"},
        "jobs": {"backend": "local", "poll_interval": "0.2s", "poll_interval_max": "0.5s",
                 "local": {"max_parallel": 4, "sandbox": False,
                           **({"workdir": str(workdir)} if workdir is not None else {})}},
        "log": {"level": "info", "format": "text"},
    }
    return _merge(base, sections)


def write_config(path: Path, redis_url: str, api_url: str = "", **sections: Mapping[str, Any]) -> Path:
    """config_data as a TOML file at `path`, the jobs' workdir beside it."""
    path.write_text(render_toml(config_data(redis_url, api_url, path.parent / "jobs", **sections)) + "\n")
    return path
