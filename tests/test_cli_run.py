"""`litbotd run` refuses to start, with one clear line, when it could not work."""
from __future__ import annotations

import subprocess
import sys

from helpers.env import scrubbed_env


def run(tmp_path, env_extra: dict[str, str], toml: str = "") -> subprocess.CompletedProcess:
    cfg = tmp_path / "litbotd.toml"
    cfg.write_text(toml)
    env = scrubbed_env({"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, **env_extra)
    return subprocess.run([sys.executable, "-m", "litbotd", "run", "-c", str(cfg)], capture_output=True,
                          text=True, timeout=60, env=env)


def test_run_without_a_webhook_secret_refuses_to_start(tmp_path):
    out = run(tmp_path, {})
    assert out.returncode == 1
    assert "github.webhook_secret" in out.stderr and "Traceback" not in out.stderr


def test_run_with_lightning_but_no_teamspace_refuses_to_start(redis_server, tmp_path):
    out = run(tmp_path, {"GH_WEBHOOK_SECRET": "s3cr3t-value", "REDIS_URL": redis_server.url},
              '[server]\nport = 0\nhost = "127.0.0.1"\n')
    assert out.returncode == 1
    assert "jobs.lightning.teamspace" in out.stderr and "Traceback" not in out.stderr
    assert "s3cr3t-value" not in out.stderr + out.stdout


def test_run_with_an_unknown_key_names_it(tmp_path):
    out = run(tmp_path, {"GH_WEBHOOK_SECRET": "x"}, "[workers]\ncuont = 3\n")
    assert out.returncode == 1 and "workers.cuont: unknown key" in out.stderr


def test_usage_error_exits_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "litbotd", "frobnicate"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2


# -- start-up errors: one line, exit 1, within seconds (SPEC §2, §8) ---------------------------------
def _local(tmp_path, extra: str = "") -> str:
    return f'[jobs]\nbackend = "local"\n[jobs.local]\nworkdir = "{tmp_path / "jobs"}"\nsandbox = false\n{extra}'


def test_run_on_a_port_in_use_is_one_line_and_exit_1(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # Redis is not even reachable: the listener is bound first, so this cannot hang waiting for it.
        out = run(tmp_path, {"GH_WEBHOOK_SECRET": "x", "REDIS_URL": "redis://127.0.0.1:1/0"},
                  f'[server]\nhost = "127.0.0.1"\nport = {port}\n' + _local(tmp_path))
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "Traceback" not in out.stderr, out.stderr


def _ec_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def test_an_ec_or_malformed_key_is_refused_by_run_and_check_config(tmp_path):
    for pem, says in ((_ec_key(), "must be RSA"),
                      ("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n", "not a readable PEM")):
        env = {"GH_WEBHOOK_SECRET": "x", "GH_APP_ID": "1", "GH_PRIVATE_KEY": pem, "REDIS_URL": "redis://127.0.0.1:1/0"}
        for cmd in ("run", "check-config"):
            cfg = tmp_path / "litbotd.toml"
            cfg.write_text('[server]\nport = 0\nhost = "127.0.0.1"\n' + _local(tmp_path))
            out = subprocess.run([sys.executable, "-m", "litbotd", cmd, "-c", str(cfg)], capture_output=True,
                                 text=True, timeout=60, env=scrubbed_env({"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, **env))
            assert out.returncode == 1, (cmd, out.stderr)
            assert "github.private_key" in out.stderr and says in out.stderr and "Traceback" not in out.stderr
            assert pem.splitlines()[1] not in out.stdout + out.stderr


def test_check_config_refuses_what_run_refuses(tmp_path):
    """A Lightning backend without a teamspace: `run` refuses it, so check-config exits 1 too."""
    cfg = tmp_path / "litbotd.toml"
    cfg.write_text("")
    out = subprocess.run([sys.executable, "-m", "litbotd", "check-config", "-c", str(cfg)], capture_output=True,
                         text=True, timeout=60, env=scrubbed_env({"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
                                                                  GH_WEBHOOK_SECRET="x"))
    assert out.returncode == 1 and "jobs.lightning.teamspace" in out.stderr, out.stderr


def test_version_and_config_before_the_subcommand(tmp_path):
    out = subprocess.run([sys.executable, "-m", "litbotd", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("litbotd "), out
    cfg = tmp_path / "litbotd.toml"
    cfg.write_text("[workers]\ncount = 0\n")
    out = subprocess.run([sys.executable, "-m", "litbotd", "-c", str(cfg), "check-config"], capture_output=True,
                         text=True, timeout=60, env=scrubbed_env({"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
                                                                  GH_WEBHOOK_SECRET="x"))
    assert out.returncode == 0 and "count = 0" in out.stdout, out.stderr
