"""`litbotd demo` (SPEC §2): the whole offline path, and the annotations of its failing cell."""
from __future__ import annotations

import re
import subprocess
import sys

from helpers.demo import demo_keep
from helpers.env import scrubbed_env
from litbotd.lifecycle.comments import COMMENT_EDIT_INTERVAL


def test_demo_runs_and_shows_the_failing_cells_annotations():
    out = subprocess.run([sys.executable, "-m", "litbotd", "demo"], capture_output=True, text=True, timeout=120,
                         env=scrubbed_env())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "annotation (failure) check.py:" in out.stdout
    assert "Tests: 1 passed, 1 failed, 0 skipped, 0 errors" in out.stdout
    assert "result: as expected" in out.stdout
    # the dashboard's address and the admin token made for this run of the demo
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/dashboard  \(admin token: [\w-]{20,}\)", out.stdout)


def test_demo_narrates_each_event_when_github_received_it_and_ends_right_after_the_last():
    """Issue 17: the narration printed both conclusions at 12.3 s (after the comment's 10 s edit
    spacing), though the stand-in had them at 1.3 s and 1.6 s."""
    out = subprocess.run([sys.executable, "-m", "litbotd", "demo"], capture_output=True, text=True, timeout=120,
                         env=scrubbed_env())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    times = {}
    for line in out.stdout.splitlines():
        if m := re.match(r"\s+\[\s*([0-9.]+)s\] (.*)", line):
            times.setdefault(m.group(2), []).append(float(m.group(1)))
    concluded = [t for text, ts in times.items() if "→ completed" in text for t in ts]
    done = [t for text, ts in times.items() if text.startswith("done:") for t in ts]
    assert len(concluded) == 2 and len(done) == 1, out.stdout
    # printed at the time the stand-in received them, not held back by the edit spacing ...
    assert max(concluded) < COMMENT_EDIT_INTERVAL, out.stdout
    # ... and the demo ends once the comment's last edit (not held either) is out
    assert done[0] - max(concluded) < COMMENT_EDIT_INTERVAL / 2, out.stdout


def test_demo_keep_prints_and_serves_each_runs_page_until_ctrl_c():
    import urllib.request

    with demo_keep() as out:
        urls = re.findall(r"run page: (http://127\.0\.0\.1:\d+/runs/\S+)", out)
        assert len(urls) == 2, out[-3000:]
        for url in urls:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = resp.read().decode()
            assert resp.status == 200 and "demo (" in body and 'id="L1"' in body
