"""`litbotd demo --keep` as a subprocess: started, read until it serves its pages, and ended with
Ctrl-C (SIGINT), which must exit 0."""
from __future__ import annotations

import signal
import subprocess
import sys
from contextlib import contextmanager
from typing import Iterator

from helpers.env import scrubbed_env


@contextmanager
def demo_keep() -> Iterator[str]:
    """Yields what the demo printed up to serving its run pages and dashboard."""
    p = subprocess.Popen([sys.executable, "-m", "litbotd", "demo", "--keep"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=scrubbed_env())
    try:
        seen: list[str] = []
        assert p.stdout is not None
        for line in p.stdout:
            seen.append(line)
            if (any(s.startswith("serving the run pages") for s in seen)
                    and any("/dashboard (admin token:" in s for s in seen)):
                break
        yield "".join(seen)
        p.send_signal(signal.SIGINT)
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
