"""`litbotd run` refuses to start, with one clear line, when it could not work."""
from __future__ import annotations

import subprocess
import sys


def run(tmp_path, env_extra: dict[str, str], toml: str = "") -> subprocess.CompletedProcess:
    cfg = tmp_path / "litbotd.toml"
    cfg.write_text(toml)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env_extra}
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
