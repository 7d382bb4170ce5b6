"""Idle cost: the Redis commands an idle `litbotd run` sends per second, and its RSS.

    .venv/bin/python tests/bench/idle.py [--seconds 30] [--workers 4] [--json]

Starts a private redis-server and the real daemon (local backend, the given worker count, the
listener on), waits until it is ready, then counts with MONITOR the commands the daemon sends over
the window (a script call is one command; the commands inside it are Redis's work, not the
client's). Goal (issue 13): under 10 commands a second with 4 workers. Not a test: pytest does
not collect it.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from helpers.env import scrubbed_env  # noqa: E402
from helpers.net import free_port  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--json", action="store_true", help="end with one JSON line")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="litbotd-idle-") as tmp:
        rport, hport = free_port(), free_port()
        redis = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(rport), "--bind",
                                  "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp],
                                 stdout=subprocess.DEVNULL)
        cfg = Path(tmp) / "litbotd.toml"
        cfg.write_text(f'[server]\nhost = "127.0.0.1"\nport = {hport}\n[redis]\nurl = "redis://127.0.0.1:{rport}/0"\n'
                       f'[workers]\ncount = {args.workers}\n[jobs]\nbackend = "local"\n'
                       f'[jobs.local]\nworkdir = "{tmp}/jobs"\nsandbox = false\n'
                       '[github]\nredeliver_interval = 0\n[log]\nformat = "text"\n')
        env = scrubbed_env(GH_WEBHOOK_SECRET="idle-secret")
        daemon = subprocess.Popen([sys.executable, "-m", "litbotd", "run", "-c", str(cfg)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=open(Path(tmp) / "daemon.log", "wb"))
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{hport}/healthz", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise SystemExit("daemon not ready: " + (Path(tmp) / "daemon.log").read_text()[-2000:])
                time.sleep(0.1)
            time.sleep(3)  # past the start-up sweep and first beats
            monitor = subprocess.Popen([shutil.which("redis-cli") or "redis-cli", "-p", str(rport), "monitor"],
                                       stdout=subprocess.PIPE, text=True)
            t0 = time.monotonic()
            time.sleep(args.seconds)
            monitor.terminate()
            out, _ = monitor.communicate(timeout=10)
            t1 = time.monotonic()
            lines = [ln for ln in out.splitlines() if ln[:1].isdigit() and " lua]" not in ln]
            rate = len(lines) / (t1 - t0)
            by_command: dict[str, int] = {}
            for ln in lines:
                cmd = ln.split('"', 2)[1].lower() if '"' in ln else "?"
                by_command[cmd] = by_command.get(cmd, 0) + 1
            rss = int(next(ln for ln in Path(f"/proc/{daemon.pid}/status").read_text().splitlines()
                           if ln.startswith("VmRSS:")).split()[1]) / 1024
        finally:
            daemon.terminate()
            daemon.wait(30)
            redis.terminate()
            redis.wait(10)
    ok = rate < 10
    print(f"idle daemon, {args.workers} workers, {args.seconds:g} s: {rate:.1f} Redis commands/s "
          f"(goal < 10: {'met' if ok else 'NOT met'}), RSS {rss:.1f} MiB")
    print("  " + ", ".join(f"{k} {v / (t1 - t0):.2f}/s" for k, v in sorted(by_command.items(), key=lambda kv: -kv[1])))
    if args.json:
        print(json.dumps({"workers": args.workers, "commands_per_s": round(rate, 2), "rss_mib": round(rss, 1)}))


if __name__ == "__main__":
    main()
