"""The run page's view of a log (logview.py, pure): ANSI → classes, redraws, bad bytes, marks."""
from __future__ import annotations

import pytest

from litbotd import logview
from litbotd.logview import Marks, Renderer, Style, apply_sgr, nearest_256, split_lines

ESC = "\x1b"


@pytest.mark.parametrize("line, want", [
    ("plain", [("", "plain")]),
    (f"{ESC}[31mred{ESC}[0m back", [("f1", "red"), ("", " back")]),
    (f"{ESC}[1;32mok{ESC}[22m", [("f2 b", "ok")]),
    (f"{ESC}[91;44mx", [("f9 g4", "x")]),
    (f"{ESC}[38;5;208mo", [("f208", "o")]),
    (f"{ESC}[38;2;255;0;0mr", [("f196", "r")]),          # 24-bit → nearest palette entry
    (f"{ESC}[48:5:22mg", [("g22", "g")]),               # colon form
    (f"{ESC}[7mrev", [("rvf rvb", "rev")]),             # inverse of the defaults
    (f"{ESC}[31;7mrev", [("rvf g1", "rev")]),
    (f"{ESC}[2K{ESC}[1Gclear{ESC}[K", [("", "clear")]),  # erase and cursor moves dropped
    (f"{ESC}]0;title{chr(7)}text", [("", "text")]),     # OSC title dropped
    (f"{ESC}]8;;http://x{ESC}\\link{ESC}]8;;{ESC}\\", [("", "link")]),
    (f"{ESC}(Bcharset", [("", "charset")]),
    ("a\x00b\x08c\x07d", [("", "abcd")]),                # other control characters dropped
    ("tab\there", [("", "tab\there")]),
    ("10%\r50%\r100%", [("", "100%")]),                 # redraws collapsed to the last one
    ("done 100%\r", [("", "done 100%")]),               # CRLF / trailing \r: not a redraw
    ("progress 3/3\r\r", [("", "progress 3/3")]),
    ("<script>alert(1)</script>", [("", "<script>alert(1)</script>")]),  # text; escaping is the template's
    (f"{ESC}[38;5;999mbad{ESC}[38;5m", [("", "bad")]),  # out-of-range and truncated: ignored
    (f"{ESC}[31;<m?", [("", "?")]),                      # not numbers: ignored
])
def test_render_line(line, want):
    assert Renderer().line(line) == want


def test_style_carries_to_the_next_line_until_reset():
    r = Renderer()
    assert r.line(f"{ESC}[33mwarn") == [("f3", "warn")]
    assert r.line("still yellow") == [("f3", "still yellow")]
    assert r.line(f"{ESC}[0mplain") == [("", "plain")]


def test_colour_set_before_a_redraw_stays():
    assert Renderer().line(f"{ESC}[32m10%\r100%") == [("f2", "100%")]


def test_long_line_is_cut_with_a_note():
    out = Renderer().line("x" * (logview.MAX_LINE_CHARS + 5))
    assert sum(len(t) for c, t in out if c != "cut") == logview.MAX_LINE_CHARS
    assert out[-1][0] == "cut" and "5 more characters" in out[-1][1]


@pytest.mark.parametrize("data, want", [
    (b"a\nb\n", ["a", "b"]),
    (b"a\n\nb", ["a", "", "b"]),
    (b"caf\xc3\xa9 \xff\xfe\n", ["caf\u00e9 \ufffd\ufffd"]),   # invalid UTF-8 shown as U+FFFD
    (b"", []),
])
def test_split_lines(data, want):
    assert split_lines(data) == want


@pytest.mark.parametrize("rgb, index", [((0, 0, 0), 16), ((255, 255, 255), 231), ((128, 128, 128), 244),
                                        ((0, 0, 255), 21), ((95, 135, 175), 67)])
def test_nearest_256(rgb, index):
    assert nearest_256(*rgb) == index


def test_sgr_reset_forms():
    s = apply_sgr(Style(), "1;4;3;31;42")
    assert s == Style(fg=1, bg=2, bold=True, underline=True, italic=True)
    assert apply_sgr(s, "") == Style() == apply_sgr(s, "0")
    assert apply_sgr(s, "39;49;24;23") == Style(bold=True)


def test_marks_find_annotations_with_their_lines_and_the_tests():
    log = [
        "collecting",
        f"{ESC}[31m::error file=src/app.py,line=10,title=Type error::expected int{ESC}[0m",
        "::warning::no file here",
        "litci-workspace: /job/src",
        "::stop-commands::pause",
        "::error file=ignored.py::echoed, not a command",
        "::pause::",
        "::notice file=/job/src/docs/x.md,line=2::absolute inside the workspace",
        "litci-tests: 3 passed, 1 failed, 0 skipped, 0 errors",
    ]
    m = Marks().feed_all(log)
    assert [(k.line, k.level, k.title, k.where) for k in m.marks] == [
        (2, "failure", "Type error", "src/app.py:10"), (3, "warning", "", ""), (8, "notice", "", "docs/x.md:2")]
    assert m.marks[0].message == "expected int"
    assert m.tests == "3 passed, 1 failed, 0 skipped, 0 errors"
    assert logview.Mark.from_json(m.marks[0].to_json()) == m.marks[0]


def test_marks_are_capped():
    m = Marks().feed_all(["::error::x"] * (logview.MAX_MARKS + 3))
    assert len(m.marks) == logview.MAX_MARKS and m.dropped == 3


def test_html_lines_escape_every_text_and_class():
    html = logview.html_lines(7, [[("", "<script>alert('x')</script> & co")], [("f1 b", "red"), ('"><x', "y")], []])
    assert html == ('<span class="ln" id="L7"><a href="#L7" class="n">7</a>'
                    "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; co\n</span>"
                    '<span class="ln" id="L8"><a href="#L8" class="n">8</a><span class="f1 b">red</span>'
                    '<span class="&#34;&gt;&lt;x">y</span>\n</span>'
                    '<span class="ln" id="L9"><a href="#L9" class="n">9</a>\n</span>')
