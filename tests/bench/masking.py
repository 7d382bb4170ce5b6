"""Masking cost: MB/s of `masking.Masker` over a job log, by number of secrets, against a
baseline measured in the same round (one `str.replace` per masked form, the hand-written loop
that pyahocorasick replaces), and the streaming masker in 64 KiB chunks.

    .venv/bin/python tests/bench/masking.py [--mb 8] [--rounds 3] [--json]

The log is printable ASCII lines with a few secrets in them. Goal (issue 20): masking a run's
whole log costs far less than the job; with 100 secrets, several times faster than the loop.
Not a test: pytest does not collect it.
"""
from __future__ import annotations

import argparse
import json
import random
import secrets
import statistics
import string
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from litbotd import masking


def make_log(mb: float, values: list[str]) -> str:
    rnd = random.Random(7)
    words = ["".join(rnd.choice(string.ascii_lowercase) for _ in range(rnd.randint(2, 9))) for _ in range(500)]
    lines, size = [], 0
    while size < mb * 1_000_000:
        line = " ".join(rnd.choice(words) for _ in range(12))
        if rnd.random() < 0.001:
            line += " " + rnd.choice(values)
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines)


def loop_mask(text: str, patterns: list[str]) -> str:
    for p in patterns:
        if p in text:
            text = text.replace(p, masking.MASK)
    return text


def timed(fn, *args) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def stream_all(m: masking.Masker, text: str) -> str:
    s = m.stream()
    out = [s.feed(text[i:i + 65536]) for i in range(0, len(text), 65536)]
    return "".join(out) + s.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = {}
    for n in (1, 10, 100):
        values = [secrets.token_urlsafe(24) + "/+:" for _ in range(n)]
        text = make_log(args.mb, values)
        m = masking.Masker(values)
        patterns = sorted(m.patterns, key=len, reverse=True)
        assert m.mask(text) == stream_all(m, text)
        ac, loop, st = [], [], []
        for _ in range(args.rounds):  # interleaved: the machine is shared
            ac.append(timed(m.mask, text))
            loop.append(timed(loop_mask, text, patterns))
            st.append(timed(stream_all, m, text))
        mb = len(text) / 1e6
        row = {"secrets": n, "patterns": len(patterns), "masker_mb_s": round(mb / statistics.median(ac), 1),
               "stream_mb_s": round(mb / statistics.median(st), 1),
               "loop_mb_s": round(mb / statistics.median(loop), 1),
               "ratio_vs_loop": round(statistics.median([lp / a for lp, a in zip(loop, ac, strict=True)]), 2)}
        results[n] = row
        print(f"{n:>3} secrets ({row['patterns']} forms): masker {row['masker_mb_s']} MB/s, "
              f"stream {row['stream_mb_s']} MB/s, str.replace loop {row['loop_mb_s']} MB/s "
              f"(×{row['ratio_vs_loop']} the loop)")
    ok = results[100]["ratio_vs_loop"] > 2
    print("verdict:", "ok" if ok else "SLOWER THAN EXPECTED", "(100 secrets: more than twice the loop's speed)")
    if args.json:
        print(json.dumps({"results": list(results.values()), "ok": ok}))


if __name__ == "__main__":
    main()
