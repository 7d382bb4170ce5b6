"""Config parsing (SPEC §3): durations, errors that name the key, environment and credential overrides."""
from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from litbotd import config as config_mod
from litbotd import configfile
from litbotd.config import ConfigError, parse_duration
from litbotd.configfile import parse

PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAtest\n-----END RSA PRIVATE KEY-----\n"


@pytest.mark.parametrize("value, seconds", [
    ("15s", 15.0), ("5m", 300.0), ("2h", 7200.0), ("1d", 86400.0), ("250ms", 0.25), ("1.5s", 1.5),
    ("7", 7.0), (" 3m ", 180.0), (10, 10.0), (2.5, 2.5), (0, 0.0),
])
def test_durations(value, seconds):
    assert parse_duration(value, "k") == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["fast", "5 minutes", "-1s", -3, True, None, [1], "1y", ""])
def test_bad_durations_name_the_key(value):
    with pytest.raises(ConfigError, match=r"^workers\.lease_timeout: "):
        parse({"workers": {"lease_timeout": value}}, env={})


def test_defaults_match_the_spec():
    cfg = parse({}, env={})
    assert cfg.redis.url == "redis://localhost:6379/0" and cfg.redis.queue == "bot_queue"
    w = cfg.workers
    assert (w.count, w.heartbeat_interval, w.lease_timeout, w.max_attempts) == (4, 2.0, 10.0, 5)
    assert (w.retry_backoff, w.retry_backoff_max, w.shutdown_grace) == (2.0, 300.0, 30.0)
    assert cfg.github.redeliver_interval == 300.0 and cfg.github.redeliver_window == 72 * 3600.0
    assert cfg.jobs.poll_interval == 10.0 and cfg.jobs.poll_interval_max == 30.0
    assert cfg.jobs.lightning.default_image == "python:3.12-slim" and cfg.redis.require_replica is False
    assert cfg.jobs.queue_timeout == 3600.0


def test_file_values_and_durations_are_read():
    cfg = parse({"workers": {"count": 8, "heartbeat_interval": "500ms", "lease_timeout": "3s",
                             "shutdown_grace": 5},
                 "server": {"enabled": False},
                 "jobs": {"backend": "local", "local": {"workdir": "/tmp/x", "max_parallel": 3}},
                 "github": {"trusted_associations": ["OWNER"]}}, env={})
    assert cfg.workers.count == 8 and cfg.workers.heartbeat_interval == 0.5
    assert cfg.workers.lease_timeout == 3.0 and cfg.workers.shutdown_grace == 5.0
    assert cfg.server.enabled is False
    assert cfg.jobs.local.workdir == "/tmp/x" and cfg.jobs.local.max_parallel == 3
    assert cfg.github.trusted_associations == ("OWNER",)


@pytest.mark.parametrize("data, key", [
    ({"workers": {"cuont": 3}}, "workers.cuont: unknown key"),
    ({"nope": {}}, "nope: unknown key"),
    ({"jobs": {"local": {"dir": "x"}}}, "jobs.local.dir: unknown key"),
    ({"github": {"private_key": PEM}}, "github.private_key: unknown key"),  # not a file key
    ({"source": "x"}, "source: unknown key"),
])
def test_unknown_keys_are_named(data, key):
    with pytest.raises(ConfigError, match="^" + key.replace(".", r"\.")):
        parse(data, env={})


@pytest.mark.parametrize("data, key", [
    ({"workers": {"count": "4"}}, "workers.count: expected an integer"),
    ({"workers": {"count": True}}, "workers.count: expected an integer"),
    ({"workers": {"count": 2.5}}, "workers.count: expected an integer"),
    ({"server": {"enabled": "yes"}}, "server.enabled: expected true or false"),
    ({"redis": {"url": 5}}, "redis.url: expected a string"),
    ({"github": {"trusted_associations": "OWNER"}}, "github.trusted_associations: expected a list"),
    ({"workers": 3}, "workers: expected a table"),
])
def test_wrong_types_are_named(data, key):
    with pytest.raises(ConfigError, match="^" + key.replace(".", r"\.")):
        parse(data, env={})


@pytest.mark.parametrize("data, key", [
    ({"workers": {"count": -1}}, "workers.count"),
    ({"workers": {"heartbeat_interval": "5s", "lease_timeout": "5s"}}, "workers.lease_timeout"),
    ({"workers": {"max_attempts": 0}}, "workers.max_attempts"),
    ({"workers": {"retry_backoff": "10s", "retry_backoff_max": "1s"}}, "workers.retry_backoff_max"),
    ({"server": {"port": 70000}}, "server.port"),
    ({"redis": {"url": "http://x"}}, "redis.url"),
    ({"redis": {"queue": "a b"}}, "redis.queue"),
    ({"jobs": {"backend": "k8s"}}, "jobs.backend"),
    ({"log": {"level": "loud"}}, "log.level"),
])
def test_impossible_values_are_named(data, key):
    with pytest.raises(ConfigError, match="^" + key.replace(".", r"\.") + ": "):
        parse(data, env={})


def test_environment_overrides_the_file(tmp_path):
    keyfile = tmp_path / "app.pem"
    keyfile.write_text(PEM)
    env = {"GH_APP_ID": "1234", "GH_WEBHOOK_SECRET": "s3cret-from-env", "REDIS_URL": "redis://r:1/2",
           "GH_PRIVATE_KEY_FILE": str(keyfile)}
    cfg = parse({"github": {"app_id": 1, "webhook_secret": "file-secret"}, "redis": {"url": "redis://f/0"}}, env=env)
    assert cfg.github.app_id == 1234
    assert cfg.github.webhook_secret == "s3cret-from-env"
    assert cfg.redis.url == "redis://r:1/2"
    assert cfg.github.private_key_file == str(keyfile) and cfg.github.private_key == PEM
    # GH_PRIVATE_KEY (the PEM text) wins over any file
    cfg = parse({}, env={**env, "GH_PRIVATE_KEY": PEM.replace("test", "fromenv")})
    assert "fromenv" in cfg.github.private_key


def test_bad_environment_values_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^github\.app_id \(from GH_APP_ID\)"):
        parse({}, env={"GH_APP_ID": "abc"})
    with pytest.raises(ConfigError, match=r"^github\.private_key_file: cannot read"):
        parse({}, env={"GH_PRIVATE_KEY_FILE": str(tmp_path / "missing.pem")})
    notpem = tmp_path / "x.pem"
    notpem.write_text("hello")
    with pytest.raises(ConfigError, match=r"^github\.private_key_file: not a PEM"):
        parse({}, env={"GH_PRIVATE_KEY_FILE": str(notpem)})
    with pytest.raises(ConfigError, match=r"^redis\.url"):
        parse({}, env={"REDIS_URL": "localhost:6379"})


def test_systemd_credentials_directory(tmp_path):
    (tmp_path / "github-app.pem").write_text(PEM)
    (tmp_path / "webhook-secret").write_text("cred-secret\n")
    cfg = parse({"github": {"webhook_secret": "file-secret"}}, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert cfg.github.webhook_secret == "cred-secret"  # stripped
    assert cfg.github.private_key == PEM
    # the environment still wins over the credentials
    cfg = parse({}, env={"CREDENTIALS_DIRECTORY": str(tmp_path), "GH_WEBHOOK_SECRET": "env-secret"})
    assert cfg.github.webhook_secret == "env-secret"
    # an empty credentials directory changes nothing
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = parse({"github": {"webhook_secret": "file-secret"}}, env={"CREDENTIALS_DIRECTORY": str(empty)})
    assert cfg.github.webhook_secret == "file-secret" and cfg.github.private_key == ""


def test_secret_paths_name_the_key_the_credentials_and_the_config_file(tmp_path, monkeypatch):
    """What the local sandbox hides (make_backend's `hidden`), from the config and the environment."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "app.pem").write_text(PEM)
    toml = tmp_path / "litbotd.toml"
    toml.write_text('[github]\nprivate_key_file = "app.pem"\n')
    cfg = configfile.load(str(toml), env={"CREDENTIALS_DIRECTORY": "creds"})
    assert configfile.secret_paths(cfg, env={"CREDENTIALS_DIRECTORY": "creds"}) == [
        str(tmp_path / "app.pem"), str(tmp_path / "creds"), str(toml)]
    # built-in defaults: no file to hide
    assert configfile.secret_paths(parse({}, env={}), env={}) == []


def test_load_reads_toml_and_names_problems(tmp_path):
    good = tmp_path / "litbotd.toml"
    good.write_text('[workers]\ncount = 2\nlease_timeout = "30s"\n[redis]\nqueue = "{ci}:bot_queue"\n')
    cfg = configfile.load(str(good), env={})
    assert cfg.workers.count == 2 and cfg.workers.lease_timeout == 30.0 and cfg.redis.queue == "{ci}:bot_queue"
    assert cfg.source == str(good)
    bad = tmp_path / "bad.toml"
    bad.write_text("[workers\ncount = 2\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        configfile.load(str(bad), env={})
    with pytest.raises(ConfigError, match="does not exist"):
        configfile.load(str(tmp_path / "missing.toml"), env={})
    # $LITBOTD_CONFIG is used without -c
    assert configfile.load(None, env={"LITBOTD_CONFIG": str(good)}).workers.count == 2


def test_secrets_are_masked_in_the_effective_config():
    cfg = parse({}, env={"GH_WEBHOOK_SECRET": "topsecret", "GH_PRIVATE_KEY": PEM})
    text = config_mod.render_toml(config_mod.to_dict(cfg))
    assert "topsecret" not in text and "PRIVATE KEY" not in text
    assert 'webhook_secret = "***"' in text
    assert set(config_mod.secrets_of(cfg)) == {"topsecret", PEM}


def test_the_sample_config_documents_every_key_with_its_default():
    """litbotd.toml at the repository root is the reference: every key, each at its default."""
    sample = Path(__file__).resolve().parents[1] / "litbotd.toml"
    data = tomllib.loads(sample.read_text())
    assert configfile.parse(data, env={}) == configfile.parse({}, env={})

    def keys(cls: type, prefix: str = "") -> set[str]:
        out = set()
        for f in dataclasses.fields(cls):
            if f.name in ("private_key", "source", "admin_token"):  # not file keys
                continue
            if dataclasses.is_dataclass(f.default):
                out |= keys(type(f.default), f"{prefix}{f.name}.")
            else:
                out.add(prefix + f.name)
        return out

    def present(d: dict, prefix: str = "") -> set[str]:
        out = set()
        for k, v in d.items():
            leaf = not isinstance(v, dict) or prefix + k in config_mod.MAP_KEYS
            out |= {prefix + k} if leaf else present(v, f"{prefix}{k}.")
        return out

    assert present(data) == keys(config_mod.Config)


def test_github_auth_needs_the_oauth_client_and_a_public_url() -> None:
    gh = {"server": {"auth": "github", "public_url": "https://ci.example.com"},
          "github": {"client_id": "Iv1.abc", "client_secret": "s3cret"}}
    cfg = parse(gh, env={})
    assert cfg.server.auth == "github" and cfg.github.client_secret == "s3cret"
    for drop, key in (("public_url", "server.auth"), ("client_id", "github.client_id"),
                      ("client_secret", "github.client_secret")):
        data = {"server": dict(gh["server"]), "github": dict(gh["github"])}
        data["server" if drop == "public_url" else "github"].pop(drop)
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            parse(data, env={})
    with pytest.raises(ConfigError, match=r"server\.auth"):
        parse({"server": {"auth": "oauth"}}, env={})
    with pytest.raises(ConfigError, match=r"server\.admin_users\[1\]"):
        parse({"server": {"admin_users": ["alice", "bad/login"]}}, env={})
    with pytest.raises(ConfigError, match=r"server\.public_url"):
        parse({"server": {"public_url": "ci.example.com"}}, env={})


def test_client_secret_and_admin_token_credentials_are_secrets(tmp_path) -> None:
    (tmp_path / "github-client-secret").write_text("cs-from-cred\n")
    (tmp_path / "litbotd-admin-token").write_text("adm-from-cred\n")
    cfg = parse({"github": {"client_secret": "in-file"}}, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert cfg.github.client_secret == "cs-from-cred"          # the credential wins over the file
    assert cfg.server.admin_token == "adm-from-cred"
    assert {"cs-from-cred", "adm-from-cred"} <= set(config_mod.secrets_of(cfg))
    text = config_mod.render_toml(config_mod.to_dict(cfg))
    assert "cs-from-cred" not in text and "adm-from-cred" not in text and "admin_token" not in text
    assert "cs-from-cred" not in repr(cfg) and "adm-from-cred" not in repr(cfg)
    with pytest.raises(ConfigError, match=r"server\.admin_token: unknown key"):
        parse({"server": {"admin_token": "x"}}, env={})


@pytest.mark.parametrize("data, key", [
    ({"server": {"public_url": "ci.example.com"}}, "server.public_url"),
    ({"server": {"public_url": "https://ci.example.com/?x=1"}}, "server.public_url"),
    ({"server": {"auth": "none"}}, "server.auth"),
    ({"report": {"keep_logs": "0s"}}, "report.keep_logs"),
    ({"report": {"logs_dir": "relative/runs"}}, "report.logs_dir"),
])
def test_run_page_keys_name_themselves(data, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ": must"):
        parse(data, env={})


def test_run_page_keys_and_where_logs_are_kept():
    cfg = parse({"server": {"public_url": "https://ci.example.com/litbotd", "auth": "link"},
                 "report": {"keep_logs": "7d"}}, env={})
    assert cfg.server.public_url == "https://ci.example.com/litbotd" and cfg.report.keep_logs == 7 * 86400
    assert config_mod.logs_dir(cfg, {"STATE_DIRECTORY": "/var/lib/x:/other"}) == "/var/lib/x/runs"
    assert config_mod.logs_dir(cfg, {}) == "/var/lib/litbotd/runs"
    other = parse({"report": {"logs_dir": "/srv/runs"}}, env={})
    assert config_mod.logs_dir(other, {"STATE_DIRECTORY": "/x"}) == "/srv/runs"


def test_limits_keys_are_validated_by_name():
    cfg = parse({"limits": {"max_parallel_per_machine": {"L4": 2}, "per_pr_usd": 20, "prices": {"L4": 4}}}, env={})
    assert cfg.limits.max_parallel_per_machine == {"L4": 2}
    assert cfg.limits.per_pr_usd == 20.0 and isinstance(cfg.limits.per_pr_usd, float)
    assert cfg.limits.prices == {"L4": 4.0}
    assert cfg.limits.untrusted_machines == ("CPU",)
    for bad, key in [({"per_pr_usd": "20"}, "limits.per_pr_usd"),
                     ({"per_repo_day_usd": -1.0}, "limits.per_repo_day_usd"),
                     ({"max_parallel_per_repo": -2}, "limits.max_parallel_per_repo"),
                     ({"max_parallel_per_machine": {"L4": 1.5}}, "limits.max_parallel_per_machine.L4"),
                     ({"max_parallel_per_machine": [1]}, "limits.max_parallel_per_machine"),
                     ({"prices": {"L4": -1}}, "limits.prices.L4"),
                     ({"untrusted_machines": "CPU"}, "limits.untrusted_machines"),
                     ({"per_gpu": 1}, "limits.per_gpu")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            parse({"limits": bad}, env={})
    # check-config prints it back as TOML that parses to the same [limits]
    text = config_mod.render_toml(config_mod.to_dict(cfg))
    assert "max_parallel_per_machine = {L4 = 2}" in text and "per_pr_usd = 20.0" in text
    assert tomllib.loads(text)["limits"]["prices"] == {"L4": 4.0}
