"""masking.py: every form of a secret becomes ***, in one text and across the chunks of a stream."""
from __future__ import annotations

import base64
import json
import shlex
import subprocess
import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from litbotd import masking
from litbotd.masking import MASK, ByteStreamMasker, Masker

SECRET = "s3cr3t-Value/with+odd:chars,%and\"quotes'"
PEM = ("-----BEGIN PRIVATE KEY-----\n"
       "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n"
       "MzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvu\n"
       "NMoSfm76oqFvAp8Gy0iz5sxjZmSnXyCdPEovGhLa0VzMaQ8s+CLOyS56YyCFGeJZ\n"
       "-----END PRIVATE KEY-----\n")


def b64_at(value: str, offset: int) -> str:
    """What a job prints when the value sits at `offset` bytes into what it base64-encodes."""
    return base64.b64encode(b"x" * offset + value.encode() + b"!").decode()


@pytest.mark.parametrize("name, printed, expected", [
    ("raw", SECRET, MASK),
    ("URL-encoded", urllib.parse.quote(SECRET, safe=""), MASK),
    ("URL-encoded, form", urllib.parse.quote_plus(SECRET), MASK),
    ("JSON-escaped", json.dumps({"token": SECRET}), '{"token": "***"}'),
    ("JSON, ASCII only", json.dumps({"t": SECRET + "é"}), '{"t": "***\\u00e9"}'),
    ("workflow command", "::error file=a.py,line=1::" + SECRET.replace("%", "%25"), "::error file=a.py,line=1::***"),
    ("shlex-quoted", "+ curl -H " + shlex.quote(SECRET), "+ curl -H '***'"),
    ("with ANSI colours", f"\x1b[31m{SECRET}\x1b[0m", "\x1b[31m***\x1b[0m"),
    ("with a carriage return", f"{SECRET}\r", "***\r"),
])
def test_each_form_is_masked(name: str, printed: str, expected: str) -> None:
    assert Masker([SECRET]).mask(f"before {printed} after") == f"before {expected} after", name


@pytest.mark.parametrize("name, printed", [
    ("base64 offset 0", b64_at(SECRET, 0)),
    ("base64 offset 1", b64_at(SECRET, 1)),
    ("base64 offset 2", b64_at(SECRET, 2)),
    ("base64 alone", base64.b64encode(SECRET.encode()).decode()),
    ("urlsafe base64", base64.urlsafe_b64encode(b"ab" + SECRET.encode()).decode()),
])
def test_base64_at_each_alignment_is_masked(name: str, printed: str) -> None:
    masked = Masker([SECRET]).mask(f"before {printed} after")
    inner = masked.removeprefix("before ").removesuffix(" after")
    # What survives is the neighbours' own: the (up to 3) characters of the bytes before the value,
    # the (up to 4) of the "!" after it and the padding.
    assert MASK in inner and len(inner.replace(MASK, "")) <= 7, (name, masked)


def test_set_x_traces_of_bash_are_masked() -> None:
    out = subprocess.run(["bash", "-xc", 'echo "$S" >/dev/null; curl() { :; }; curl -H "x: $S"'],
                         env={"S": SECRET, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True).stderr
    assert SECRET.replace("'", "'\\''") in out  # bash's own quoting of the value
    assert Masker([SECRET]).mask(out) == "+ echo '***'\n+ curl -H 'x: ***'\n+ :\n", out


def test_each_line_of_a_multi_line_value_is_masked() -> None:
    m = Masker([PEM])
    for line in PEM.splitlines():
        assert m.mask(f"> {line} <") == f"> {MASK} <"
    assert m.mask(PEM) == MASK + "\n" or m.mask(PEM).strip() == MASK


def test_short_lines_and_values_are_not_masks() -> None:
    m = Masker(["ab\nlonger-line\n"])
    assert m.mask("ab ab") == "ab ab"
    assert m.mask("x longer-line y") == f"x {MASK} y"
    assert not Masker(["abc"]) and Masker(["abc"]).mask("abc") == "abc"
    assert not Masker([]) and Masker([]).mask("anything") == "anything"


def test_overlapping_secrets_are_masked_whole() -> None:
    m = Masker(["abcdef", "defghijk"])
    assert m.mask("..abcdefghijk..") == f"..{MASK}.."
    assert m.mask("abcdefabcdef") == MASK  # touching spans: one mask
    assert m.mask("xabcdex") == "xabcdex"


def test_unicode_values() -> None:
    v = "pässwörd-🔑-ключ"
    m = Masker([v])
    assert m.mask(f"a {v} b") == f"a {MASK} b"
    assert MASK in m.mask(json.dumps(v))
    assert MASK in m.mask(urllib.parse.quote(v))


def _stream(m: Masker, chunks: list[str]) -> str:
    s = m.stream()
    return "".join(s.feed(c) for c in chunks) + s.flush()


@pytest.mark.parametrize("text", [
    f"log line\n{SECRET}\nnext",
    f"{SECRET}{SECRET} and {b64_at(SECRET, 1)} then {urllib.parse.quote(SECRET, safe='')}",
    f"abc{PEM}def",
    "no secret at all, just a long line " * 20,
])
def test_stream_masks_across_every_split(text: str) -> None:
    m = Masker([SECRET, PEM])
    whole = m.mask(text)
    for cut in range(len(text) + 1):
        assert _stream(m, [text[:cut], text[cut:]]) == whole, cut
    assert _stream(m, list(text)) == whole  # one character at a time


def test_stream_passes_ordinary_lines_on_at_once() -> None:
    """Only a tail that could start a secret is held back: a live log is not delayed."""
    s = Masker([SECRET, PEM]).stream()
    assert s.feed("running tests...\n") == "running tests...\n"
    assert s.feed("half: s3cr") == "half: "
    assert s.feed("3t-Value/with+odd:chars,%and\"quotes' end\n") == f"{MASK} end\n"
    assert s.feed("-----BEGIN") == ""  # could be the PEM
    assert s.feed(" CERTIFICATE-----\n") == "-----BEGIN CERTIFICATE-----\n"
    assert s.flush() == ""


def test_stream_holds_a_bounded_tail() -> None:
    m = Masker(["aaaaaaaaaa"])
    s = m.stream()
    out = "".join(s.feed("a" * 7) for _ in range(1000)) + s.flush()
    assert out == MASK  # 7000 a's: one secret-covered run, however it was chunked
    assert len(s._carry) == 0


def test_bytes_stream_joins_split_characters_and_keeps_bad_bytes() -> None:
    v = "ключ-секрет"
    m = Masker([v])
    data = f"x {v} y ".encode() + b"\xff\xfe raw\n"
    for cut in range(len(data) + 1):
        s = ByteStreamMasker(m)
        out = s.feed(data[:cut]) + s.feed(data[cut:]) + s.flush()
        assert out == f"x {MASK} y ".encode() + b"\xff\xfe raw\n", cut
    s = ByteStreamMasker(Masker([]))
    assert s.feed(b"\xff as is") == b"\xff as is" and s.flush() == b""


def test_base64_of_real_tools_is_masked() -> None:
    """`base64 -w0` at each offset, as a shell prints it."""
    m = Masker([SECRET])
    for prefix in ("", "x", "xy"):
        out = subprocess.run(["base64", "-w0"], input=(prefix + SECRET).encode(), capture_output=True).stdout.decode()
        assert MASK in m.mask(out) and len(m.mask(out).replace(MASK, "")) <= 4, prefix


def test_masker_for_is_cached() -> None:
    assert masking.masker_for(["abcdef", "ghijkl"]) is masking.masker_for(["ghijkl", "abcdef", ""])
    assert masking.mask("the abcdef", ["abcdef"]) == f"the {MASK}"


@settings(max_examples=200, deadline=None)
@given(secret=st.text(min_size=4, max_size=40).filter(lambda s: len(s.strip()) >= 4),
       before=st.text(max_size=30), after=st.text(max_size=30), cut=st.integers(min_value=0, max_value=200))
def test_property_no_raw_value_survives_a_stream(secret: str, before: str, after: str, cut: int) -> None:
    m = Masker([secret])
    text = before + secret + after
    out = _stream(m, [text[:cut], text[cut:]])
    assert secret.strip() not in out
    assert out == m.mask(text)


@pytest.mark.parametrize("printed", [
    f"\x1b[1;31m{SECRET[:10]}\x1b[0m{SECRET[10:]}",          # a colour change inside the value
    f"{SECRET[:5]}\x1b[K{SECRET[5:20]}\x1b]8;;http://x\x07{SECRET[20:]}",  # erase-line, an OSC link
])
def test_a_secret_split_by_terminal_escapes_is_masked(printed: str) -> None:
    from litbotd.report import strip_ansi

    m = Masker([SECRET])
    text = f"before {printed} after\nnext line\n"
    whole = m.mask(text)
    assert strip_ansi(whole) == f"before {MASK} after\nnext line\n", whole  # escapes before it stay
    for cut in range(len(text) + 1):  # and streamed, split anywhere
        assert _stream(m, [text[:cut], text[cut:]]) == whole, cut


def test_an_escaped_line_is_held_until_it_ends_then_passed_on() -> None:
    s = Masker([SECRET]).stream()
    assert s.feed("\x1b[32mok\x1b[0m\nhalf \x1b[1m" + SECRET[:8]) == "\x1b[32mok\x1b[0m\n"
    assert s.feed("\x1b[0m" + SECRET[8:] + " done\n") == f"half \x1b[1m{MASK} done\n"
    assert s.flush() == ""
