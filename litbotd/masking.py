"""Job secrets out of job output (SPEC §8, §10): every place a job's log goes shows `***`. Pure.

A `Masker` is built from the secret values in force for a run. It masks each value in the forms a
job is likely to print it in (`forms`): the value itself, its base64 at each of the three
alignments (standard and URL-safe alphabets), URL-encoded, JSON-escaped, escaped as a workflow
command (`%0A`, `%25`, `%3A`, `%2C`: how a JUnit failure message reaches the log), quoted as
bash's `set -x` shows it, and each line of a multi-line value of `MIN_LEN` characters or more.

Matching uses pyahocorasick (one pass over the text for every pattern of every secret). Every
match counts, overlapping ones included, and the union of the matched spans becomes one `***`:
a secret that contains, overlaps or follows another is masked whole, never partly.

`StreamMasker` masks a log as it streams, across chunk boundaries: it holds back only the
shortest tail of the text seen so far that could still grow into a match (the longest suffix that
is a prefix of some pattern), so an ordinary line is passed on at once and a secret split over
two writes is still masked. A secret with terminal escapes inside it (`abc\x1b[0mdef`, whole
again on a page or in a check run, which show the text without them) is matched too: a line
holding escapes is matched as shown, and held back until it is complete. `ByteStreamMasker` does the same for bytes (a job's raw output:
decoded as UTF-8 incrementally, undecodable bytes passed through unchanged).

What this cannot do: mask a secret the job transforms in a way not listed above (reversed,
hashed, encrypted, base64 of base64, base64 wrapped by `base64` at 76 columns) or prints with
other text inserted in its middle. Masking protects against accidents, not against a job that
wants to leak what it was given: it could send it over the network anyway (README, trust model).
"""
from __future__ import annotations

import base64
import codecs
import functools
import json
import re
import urllib.parse
from collections.abc import Iterable

import ahocorasick

MASK = "***"
MIN_LEN = 4  # shorter forms (and lines of a multi-line value) are not masked: they would match anywhere
# Terminal escapes: CSI (colours, cursor moves), OSC (titles, hyperlinks; ended by BEL or ST), nF
# sequences such as charset choices (ESC ( B), other ESC pairs, and the 8-bit CSI. A page or a
# check run shows a log without them, so a secret with one inside it is whole again there: `mask`
# also matches the text as shown. (report.strip_ansi removes the same sequences.)
ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[ -/]+[0-~]"
                     r"|\x1b[@-Z\\-_]|\x9b[0-?]*[ -/]*[@-~]")
_ESCAPED_LINE = re.compile(r"[^\n]*[\x1b\x9b][^\n]*")

_URLSAFE = str.maketrans("+/", "-_")


def _base64_forms(data: bytes) -> set[str]:
    """The base64 text of `data` wherever it sits in a longer encoded string: for each of the three
    alignments (0, 1 or 2 bytes before it), the characters that depend on `data` alone."""
    out = {base64.b64encode(data).decode("ascii")}  # the whole value encoded, padding included
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + data).decode("ascii").rstrip("=")
        first = -(-8 * k // 6)                 # the first character holding no bit of the prefix
        last = (8 * (k + len(data))) // 6      # after the last character holding only bits of data
        out.add(enc[first:last])
    return out | {f.translate(_URLSAFE) for f in out}


def _escape_data(text: str) -> str:
    """A workflow command's message escaping (bootstrap.py prints JUnit failures this way)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _derived(text: str) -> set[str]:
    out = {text, text.replace("'", "'\\''"), text.replace("'", "'\"'\"'")}  # set -x: 'it'\''s'; shlex
    out |= _base64_forms(text.encode("utf-8", "surrogatepass"))
    out |= {urllib.parse.quote(text, safe=""), urllib.parse.quote(text), urllib.parse.quote_plus(text, safe="")}
    out |= {json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1]}
    data = _escape_data(text)
    out |= {data, data.replace(":", "%3A").replace(",", "%2C")}
    return out


def forms(value: str) -> set[str]:
    """Every string that is masked for one secret value (those of at least MIN_LEN characters)."""
    texts = {value, value.strip()}
    texts |= {line.strip() for line in value.splitlines()}
    texts = {t for t in texts if len(t) >= MIN_LEN}
    out: set[str] = set()
    for t in texts:
        out |= _derived(t)
    return {f for f in out if len(f) >= MIN_LEN}


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or touching spans joined, in order."""
    spans.sort()
    merged: list[tuple[int, int]] = []
    for s, e in spans:
        if merged and s <= merged[-1][1]:
            if e > merged[-1][1]:
                merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    return merged


class Masker:
    """Masks the given secret values (and their `forms`) in text."""

    def __init__(self, values: Iterable[str]) -> None:
        self.values = frozenset(v for v in values if v)
        patterns: set[str] = set()
        for v in self.values:
            patterns |= forms(v)
        self.patterns = frozenset(patterns)
        self.longest = max((len(p) for p in patterns), default=0)
        self._ac: ahocorasick.Automaton | None = None
        if patterns:
            ac = ahocorasick.Automaton()
            for p in patterns:
                ac.add_word(p, len(p))
            ac.make_automaton()
            self._ac = ac

    def __bool__(self) -> bool:
        return self._ac is not None

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where `text` holds a secret: merged (start, end) spans, in order."""
        if self._ac is None or not text:
            return []
        return _merge([(end - n + 1, end + 1) for end, n in self._ac.iter(text)])

    def shown_spans(self, text: str) -> list[tuple[int, int]]:
        """Secrets that terminal escapes split (`abc\x1b[0mdef`): matched in each escaped line as
        it is shown, mapped back to spans of `text` (the escapes inside them included)."""
        out: list[tuple[int, int]] = []
        for m in _ESCAPED_LINE.finditer(text):
            line, base = m.group(0), m.start()
            parts: list[str] = []
            where: list[int] = []
            pos = 0
            for esc in ANSI_RE.finditer(line):
                parts.append(line[pos:esc.start()])
                where.extend(range(pos, esc.start()))
                pos = esc.end()
            parts.append(line[pos:])
            where.extend(range(pos, len(line)))
            out += [(base + where[s], base + where[e - 1] + 1) for s, e in self.spans("".join(parts))]
        return out

    def mask(self, text: str) -> str:
        """`text` with every secret span replaced by one MASK (also one split by terminal escapes)."""
        spans = self.spans(text)
        if self._ac is not None and ("\x1b" in text or "\x9b" in text):
            spans = _merge(spans + self.shown_spans(text))
        if not spans:
            return text
        out, pos = [], 0
        for s, e in spans:
            out += [text[pos:s], MASK]
            pos = e
        out.append(text[pos:])
        return "".join(out)

    def held_back(self, text: str) -> int:
        """The length of the longest suffix of `text` that is the start of some pattern (and so
        may become a secret with what comes next)."""
        if self._ac is None:
            return 0
        for n in range(min(self.longest - 1, len(text)), 0, -1):
            if self._ac.match(text[len(text) - n:]):
                return n
        return 0

    def stream(self) -> StreamMasker:
        return StreamMasker(self)


class StreamMasker:
    """Masks text fed in chunks as if it were one text: `feed` returns what is final so far,
    `flush` the rest at the end."""

    def __init__(self, masker: Masker) -> None:
        self._m = masker
        self._carry = ""
        self._open = False  # the last thing sent out is a MASK that may go on into the carry
        self._masked = 0    # how much of the carry's start that MASK already covers
        self._line_cap = max(4096, 4 * masker.longest)  # the longest escaped line held back whole

    def feed(self, text: str) -> str:
        if not self._m:
            return text
        buf = self._carry + text
        final = len(buf) - self._m.held_back(buf)  # a match starting before here is whole in buf
        # A line with terminal escapes is passed on whole (a secret may be split by one; its
        # second half may not be here yet), unless it grows past a bound.
        start = buf.rfind("\n", 0, final) + 1
        if ("\x1b" in buf[start:] or "\x9b" in buf[start:]) and len(buf) - start <= self._line_cap:
            final = start
        return self._emit(buf, final)

    def flush(self) -> str:
        if not self._m:
            return ""
        buf = self._carry
        out = self._emit(buf, len(buf))
        self._carry, self._open, self._masked = "", False, 0
        return out

    def _emit(self, buf: str, final: int) -> str:
        spans = self._m.spans(buf)
        head = buf[:final]
        if "\x1b" in head or "\x9b" in head:
            spans = _merge(spans + self._m.shown_spans(head))
        if self._open:  # a secret right after (or overlapping) the last one sent: the same MASK
            spans = _merge([(0, self._masked), *spans])
        out, pos, masked_to = [], 0, -1
        for s, e in spans:
            if s >= final and not (s == 0 and self._open):
                break
            out.append(buf[pos:s])
            if not (s == 0 and self._open):
                out.append(MASK)
            pos = masked_to = e
        if pos < final:
            out.append(buf[pos:final])
        self._open = masked_to >= final
        self._masked = max(0, pos - final)
        self._carry = buf[final:]
        return "".join(out)


class ByteStreamMasker:
    """StreamMasker for raw output: UTF-8 decoded incrementally (a character split between two
    reads is joined), bytes that are not UTF-8 passed through as they were."""

    def __init__(self, masker: Masker) -> None:
        self._text = StreamMasker(masker)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self._identity = not masker

    def feed(self, data: bytes) -> bytes:
        if self._identity:
            return data
        return self._text.feed(self._decoder.decode(data)).encode("utf-8", "surrogateescape")

    def flush(self) -> bytes:
        if self._identity:
            return b""
        rest = self._text.feed(self._decoder.decode(b"", final=True)) + self._text.flush()
        return rest.encode("utf-8", "surrogateescape")


@functools.lru_cache(maxsize=256)
def _cached(values: frozenset[str]) -> Masker:
    return Masker(values)


def masker_for(values: Iterable[str]) -> Masker:
    """The Masker of a set of values, built once per distinct set (a run's log is read many
    times: the check output, the run page, its live stream). Kept in this process's memory only."""
    return _cached(frozenset(v for v in values if v))


def mask(text: str, values: Iterable[str]) -> str:
    """`text` with the given secret values masked: the log-source helper (masker_for(...).mask)."""
    return masker_for(values).mask(text)
