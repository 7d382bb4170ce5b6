"""`litbotd demo` (SPEC §2): the whole offline path, and the annotations of its failing cell."""
from __future__ import annotations

import os
import re
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
    # the dashboard's address and the admin token made for this run of the demo
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/dashboard  \(admin token: [\w-]{20,}\)", out.stdout)
