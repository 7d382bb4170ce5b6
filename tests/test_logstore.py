"""Reading a job's log for its page in bounded pieces (logstore.LogSource, Store)."""
from __future__ import annotations

import os
import time

import pytest

from litbotd import logstore
from litbotd.logstore import LogSource, Store


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(logstore, "CHUNK", 64)  # many checkpoints in a small file


def write(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines))


@pytest.mark.usefixtures("small_chunks")
def test_index_and_windows(tmp_path):
    lines = [f"line {i} " + "x" * (i % 7) for i in range(1, 501)]
    p = tmp_path / "log.txt"
    write(p, lines)
    src = LogSource(p)
    ix = src.refresh()
    assert ix.lines == 500 and ix.end == p.stat().st_size and len(ix.checkpoints) > 10
    for n in (1, 2, 77, 250, 499, 500):
        got, end = src.lines(n, 3, 10_000)
        assert got == lines[n - 1:n + 2]
        assert p.read_bytes()[src.offset_of(n):].startswith(lines[n - 1].encode())
    got, end = src.lines(1, 1000, 200)  # the byte bound stops at a line end
    assert got and got == lines[:len(got)] and end == src.offset_of(len(got) + 1)


@pytest.mark.usefixtures("small_chunks")
def test_growing_file_indexes_complete_lines_only(tmp_path):
    p = tmp_path / "log.txt"
    p.write_bytes(b"one\ntwo\npart")
    src = LogSource(p)
    assert src.refresh().lines == 2
    assert src.new_lines(0) == (["one", "two"], 8)
    assert src.new_lines(8) == ([], 8)
    with open(p, "ab") as f:
        f.write(b"ial\n::error file=a.py,line=3::boom\n")
    ix = src.refresh()
    assert ix.lines == 4 and [(m.line, m.where) for m in ix.marks.marks] == [(4, "a.py:3")]
    assert src.new_lines(8) == (["partial", "::error file=a.py,line=3::boom"], p.stat().st_size)
    end4 = ix.end
    with open(p, "ab") as f:
        f.write(b"no newline at the end")
    assert src.refresh().lines == 4
    assert src.refresh(final=True).lines == 5
    assert src.new_lines(end4, final=True)[0] == ["no newline at the end"]


def test_the_index_finds_commands_behind_colours_and_skips_the_rest(tmp_path):
    p = tmp_path / "log.txt"
    p.write_bytes(b"tests/a.py::test_one PASSED\n"                       # '::' inside a line: not a command
                  b"  \x1b[31m::error file=a.py,line=1::red\x1b[0m\n"
                  b"\x1b[2K\x1b[1G::warning::after an erase\n"
                  b"\xff\xfe::notice::bad bytes first\n"                  # not at the line start: ignored
                  b"litci-tests: 1 passed, 1 failed, 0 skipped, 0 errors\n")
    ix = LogSource(p).refresh()
    assert [(m.line, m.level, m.message) for m in ix.marks.marks] == [(2, "failure", "red"), (3, "warning", "after an erase")]
    assert ix.marks.tests == "1 passed, 1 failed, 0 skipped, 0 errors" and ix.lines == 5


def test_a_replaced_file_is_indexed_again(tmp_path):
    p = tmp_path / "log.txt"
    write(p, ["a", "b", "c"])
    src = LogSource(p)
    assert src.refresh().lines == 3
    tmp = tmp_path / "new"
    write(tmp, ["x"])
    os.replace(tmp, p)
    assert src.refresh().lines == 1


def test_missing_file_is_empty(tmp_path):
    src = LogSource(tmp_path / "nothing")
    assert src.refresh().lines == 0 and src.lines(1, 10, 100) == ([], 0) and src.raw(0, 10) == (b"", 0)


def test_store_meta_and_prune(tmp_path):
    st = Store(str(tmp_path))
    st.write_meta("litci-old", {"a": 1})
    logstore.keep_copy(tmp_path / "missing", st.log_path("litci-old"))
    st.write_meta("litci-new", {"b": 2})
    (tmp_path / "not-a-run").mkdir()
    old = time.time() - 100
    os.utime(st.dir("litci-old") / "meta.json", (old, old))
    assert st.read_meta("litci-old") == {"a": 1} and st.read_meta("litci-none") is None
    assert st.prune(keep=50) == 1
    assert not st.dir("litci-old").exists() and st.dir("litci-new").exists() and (tmp_path / "not-a-run").exists()


@pytest.mark.usefixtures("small_chunks")
def test_tail_is_the_last_lines_within_the_bytes(tmp_path):
    lines = [f"line {i}" for i in range(1, 301)]
    p = tmp_path / "log.txt"
    write(p, lines)
    src = LogSource(p)
    src.refresh()
    assert src.tail(10, 10_000) == (291, lines[-10:])
    first, got = src.tail(1000, 100)  # bytes bound: whole lines only
    assert got == lines[-len(got):] and first == 301 - len(got) and 0 < len(got) < 20


def test_raw_pieces_end_at_line_ends(tmp_path):
    p = tmp_path / "log.txt"
    p.write_bytes(b"aaaa\nbbbb\ncc")
    src = LogSource(p)
    assert src.raw(0, 7) == (b"aaaa\n", 5)            # cut at the line end
    assert src.raw(5, 7) == (b"bbbb\ncc", 12)          # the file's last bytes
    assert src.raw(0, 3) == (b"aaa", 3)               # a line longer than the piece


def test_everything_shown_goes_through_the_masking_in_force(tmp_path):
    p = tmp_path / "log.txt"
    p.write_bytes(b"token hunter2 here\n::error file=a.py,line=1::leaked hunter2\n\xff hunter2\n")
    masking = [None]
    src = LogSource(p, lambda: masking[0])
    masking[0] = lambda text: text.replace("hunter2", "***")
    ix = src.refresh()
    assert ix.marks.marks[0].message == "leaked ***"
    assert src.lines(1, 10, 1000)[0] == ["token *** here", "::error file=a.py,line=1::leaked ***", "\ufffd ***"]
    assert src.tail(1, 1000) == (3, ["\ufffd ***"])
    assert src.new_lines(0)[0][0] == "token *** here"
    assert src.raw(0, 1000)[0] == b"token *** here\n::error file=a.py,line=1::leaked ***\n\xff ***\n"
    assert src.raw(0, 1000)[1] == p.stat().st_size  # offsets stay the file's
    masking[0] = None  # another config in force: asked at each read
    assert src.lines(1, 1, 1000)[0] == ["token hunter2 here"]
