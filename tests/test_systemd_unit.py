"""systemd/litbotd.service (SPEC §7): it passes `systemd-analyze verify` and says what §7 asks."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import missing_tool
from litbotd.config import WorkersConfig, parse_duration

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "litbotd.service"
# The only verify messages allowed: the dedicated user does not exist on a CI machine.
_USER_MISSING = re.compile(r"(user|group).*litbotd.*(not exist|not found|failed to resolve)|"
                           r"litbotd.*(user|group).*(not exist|not found)", re.I)


def _analyze() -> str:
    tool = shutil.which("systemd-analyze") or ("/usr/bin/systemd-analyze" if Path("/usr/bin/systemd-analyze").exists() else None)
    if tool is None:
        missing_tool("systemd-analyze is not installed: install the systemd package (Linux only; .ci/run does)")
    return tool


def _directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _testable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's interpreter (an existing executable)."""
    text = UNIT.read_text()
    text, n = re.subn(r"(?m)^ExecStart=\S+ run$", f"ExecStart={sys.executable} -m litbotd run", text)
    assert n == 1, "ExecStart should be `<path>/litbotd run`"
    copy = tmp_path / "litbotd.service"
    copy.write_text(text)
    return copy


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = _testable_copy(tmp_path)
    proc = subprocess.run([_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=60)
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0, f"systemd-analyze verify failed ({proc.returncode}):\n{output}"
    # verify exits 0 on unknown keys and unparsable values ("…, ignoring"): any message is a failure.
    problems = [ln for ln in output.splitlines() if ln.strip() and not _USER_MISSING.search(ln)]
    assert not problems, "systemd-analyze verify complained:\n" + "\n".join(problems)


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelled sandbox directive is reported."""
    unit = _testable_copy(tmp_path)
    unit.write_text(unit.read_text().replace("ProtectHome=yes", "ProtectHomme=yes"))
    proc = subprocess.run([_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "ProtectHomme" in proc.stdout + proc.stderr


def test_unit_is_hardened(tmp_path: Path) -> None:
    unit = _testable_copy(tmp_path)
    proc = subprocess.run([_analyze(), "security", "--offline=yes", str(unit)],
                          capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", proc.stdout + proc.stderr)
    assert m, f"no exposure level in:\n{proc.stdout}{proc.stderr}"
    # 0 = fully locked down, 10 = unprotected; a plain User= service scores about 9. The local
    # jobs' bubblewrap sandbox costs about 0.5: user/pid/net/... namespaces, @mount, AF_NETLINK,
    # and no ProtectKernelTunables=/ProtectKernelLogs= (docs/operations.md says why).
    assert float(m.group(1)) <= 3.0, proc.stdout


def test_unit_says_what_spec_7_asks() -> None:
    d = _directives()
    one = {k: v[-1] for k, v in d.items()}
    assert one["Type"] in ("notify", "notify-reload")
    assert one["NotifyAccess"] == "main"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert parse_duration(one["WatchdogSec"]) == 30
    assert one["Restart"] == "on-failure"
    assert parse_duration(one["TimeoutStopSec"]) > WorkersConfig().shutdown_grace
    # Local jobs survive a restart of the daemon: only the main process is signalled.
    assert one["KillMode"] == "process"
    assert one["User"] == "litbotd" and "DynamicUser" not in d
    assert set(d["LoadCredential"]) == {"github-app.pem:/etc/litbotd/github-app.pem",
                                        "webhook-secret:/etc/litbotd/webhook-secret"}
    assert one["StateDirectory"] == "litbotd" and one["ConfigurationDirectory"] == "litbotd"
    for key, value in {"ProtectSystem": "strict", "ProtectHome": "yes", "NoNewPrivileges": "yes",
                       "PrivateTmp": "yes", "PrivateDevices": "yes", "CapabilityBoundingSet": "",
                       "SystemCallFilter": "@system-service @mount",
                       "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK"}.items():
        assert one.get(key) == value, key


def test_unit_lets_the_local_jobs_sandbox_work() -> None:
    """bwrap + slirp4netns under this unit: the namespaces they create, /dev/net/tun, and a /proc
    the kernel lets a new PID namespace mount (no over-mounts of /proc/sys or /proc/kmsg)."""
    one = {k: v[-1] for k, v in _directives().items()}
    assert set(one["RestrictNamespaces"].split()) >= {"user", "mnt", "pid", "ipc", "uts", "net", "cgroup"}
    assert one.get("ProtectKernelTunables", "no") == "no" and one.get("ProtectKernelLogs", "no") == "no"
    assert one.get("ProcSubset", "all") == "all" and one.get("PrivateUsers", "no") == "no"
    assert one["BindPaths"] == "-/dev/net/tun" and one["DeviceAllow"] == "/dev/net/tun rw"


def test_credential_names_match_config(tmp_path: Path) -> None:
    """The credential names in the unit are the ones config.py reads from $CREDENTIALS_DIRECTORY."""
    from litbotd.configfile import parse

    pem = "-----BEGIN PRIVATE KEY-----\nMIIBVQIBADANBgkqhkiG9w0BAQEFAASCAT8wggE7AgEAAkEA\n-----END PRIVATE KEY-----\n"
    contents = {"github-app.pem": pem, "webhook-secret": "s3cret-from-credential\n"}
    for name in (v.split(":", 1)[0] for v in _directives()["LoadCredential"]):
        (tmp_path / name).write_text(contents[name])
    cfg = parse({}, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert cfg.github.webhook_secret == "s3cret-from-credential"
    assert cfg.github.private_key == pem
