"""`litbotd demo` (SPEC §2): the whole offline path, and the annotations of its failing cell."""
from __future__ import annotations

import os
import subprocess
import sys


def test_demo_runs_and_shows_the_failing_cells_annotations():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GH_", "LITBOTD_", "REDIS_"))}
    out = subprocess.run([sys.executable, "-m", "litbotd", "demo"], capture_output=True, text=True, timeout=120,
                         env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "annotation (failure) check.py:" in out.stdout
    assert "Tests: 1 passed, 1 failed, 0 skipped, 0 errors" in out.stdout
    assert "result: as expected" in out.stdout


def test_demo_keep_prints_and_serves_each_runs_page_until_ctrl_c():
    import re
    import signal
    import urllib.request

    env = {k: v for k, v in os.environ.items() if not k.startswith(("GH_", "LITBOTD_", "REDIS_"))}
    p = subprocess.Popen([sys.executable, "-m", "litbotd", "demo", "--keep"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        seen = []
        assert p.stdout is not None
        for line in p.stdout:
            seen.append(line)
            if line.startswith("serving the run pages"):
                break
        out = "".join(seen)
        urls = re.findall(r"run page: (http://127\.0\.0\.1:\d+/runs/\S+)", out)
        assert len(urls) == 2, out[-3000:]
        for url in urls:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = resp.read().decode()
            assert resp.status == 200 and "demo (" in body and 'id="L1"' in body
        p.send_signal(signal.SIGINT)
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
