"""A job's log as a run page shows it (SPEC §9). Pure: bytes and text in, data out.

- `split_lines(data)`: bytes → text lines; invalid UTF-8 becomes U+FFFD, shown as text.
- `Renderer.line(text)`: one line → styled segments `(css classes, text)`. ANSI SGR colours and
  attributes become classes (16 colours, the 256-colour palette; 24-bit colours are mapped to the
  nearest palette entry, since the page's CSP `default-src 'self'` forbids inline styles); every other
  escape sequence (cursor moves, erase, OSC titles and links) and every other control character is
  dropped. The SGR state carries over to the next line, as in a terminal. A `\\r` redraw (progress
  bars) is collapsed to what was drawn last: the text after the last `\\r` that is followed by
  something. Lines are cut at MAX_LINE_CHARS (the raw download keeps them whole).
- `Marks`: what the page lists above the log, found while the lines go by: the workflow commands
  that become annotations (with their log line, for `#L120` links) and the job's test counts.

The segments are data, never HTML: the template (autoescaped) and the page's script
(`textContent`) put them on the page, so nothing in a log can become markup.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from markupsafe import Markup, escape

from . import annotations as ann

MAX_LINE_CHARS = 20_000      # longer lines are cut on the page ("… N more characters")
MAX_MARKS = 1000             # annotations listed on a page (the check run keeps at most as many)

# CSI (ESC [ … final), OSC (ESC ] … BEL or ST), other two-byte escapes, and a lone ESC.
_ESCAPE = re.compile(r"\x1b\[([0-?]*)([ -/]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[ -/]+[0-~]|\x1b[@-Z\\-_]|\x1b|\x9b[0-?]*[ -/]*[@-~]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # after escapes are gone; \t stays, \r is handled first


def split_lines(data: bytes) -> list[str]:
    """Complete lines of `data` (which should end at a newline), decoded leniently."""
    text = data.decode("utf-8", errors="replace")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


# -- colours ------------------------------------------------------------------------------------
def _cube(v: int) -> int:
    """0..255 → the nearest of the 6 levels of xterm's colour cube."""
    return 0 if v < 48 else 1 if v < 115 else (v - 35) // 40


def nearest_256(r: int, g: int, b: int) -> int:
    """The xterm-256 palette index closest to a 24-bit colour (cube or grey ramp)."""
    r, g, b = (max(0, min(255, x)) for x in (r, g, b))
    levels = (0, 95, 135, 175, 215, 255)
    ci = (_cube(r), _cube(g), _cube(b))
    cube_rgb = tuple(levels[i] for i in ci)
    grey = max(0, min(23, (((r + g + b) // 3) - 8 + 5) // 10))
    grey_v = 8 + grey * 10

    def dist(c: tuple[int, ...]) -> int:
        return sum((a - b_) ** 2 for a, b_ in zip(c, (r, g, b), strict=True))
    if dist((grey_v,) * 3) < dist(cube_rgb):
        return 232 + grey
    return 16 + 36 * ci[0] + 6 * ci[1] + ci[2]


@dataclass(frozen=True)
class Style:
    fg: int | None = None     # palette index 0..255, None: the page's default
    bg: int | None = None
    bold: bool = False
    dim: bool = False
    italic: bool = False
    underline: bool = False
    inverse: bool = False

    def classes(self) -> str:
        fg, bg = self.fg, self.bg
        out = []
        if self.inverse:
            fg, bg = bg, fg
            if fg is None:
                out.append("rvf")   # the default background as the text colour
            if bg is None:
                out.append("rvb")
        if fg is not None:
            out.append(f"f{fg}")
        if bg is not None:
            out.append(f"g{bg}")
        out += [c for c, on in (("b", self.bold), ("d", self.dim), ("i", self.italic), ("u", self.underline)) if on]
        return " ".join(out)


def _extended(params: list[int], i: int) -> tuple[int | None, int]:
    """`38;5;N` or `38;2;R;G;B` starting at params[i] (the 5 or 2): (palette index, params used)."""
    if i < len(params) and params[i] == 5 and i + 1 < len(params):
        n = params[i + 1]
        return (n if 0 <= n <= 255 else None), 2
    if i < len(params) and params[i] == 2 and i + 3 < len(params):
        return nearest_256(params[i + 1], params[i + 2], params[i + 3]), 4
    return None, len(params) - i  # malformed: the rest is ignored


# SGR codes that set or clear text attributes.
_SGR_FLAGS: dict[int, dict[str, bool]] = {
    1: {"bold": True}, 2: {"dim": True}, 3: {"italic": True}, 4: {"underline": True}, 7: {"inverse": True},
    22: {"bold": False, "dim": False}, 23: {"italic": False}, 24: {"underline": False}, 27: {"inverse": False},
}


def apply_sgr(style: Style, raw: str) -> Style:
    """The style after `ESC [ raw m`."""
    try:
        params = [int(p) if p else 0 for p in raw.replace(":", ";").split(";")] if raw else [0]
    except ValueError:
        return style
    s = style.__dict__.copy()
    i = 0
    while i < len(params):
        p = params[i]
        i += 1
        if p == 0:
            s = Style().__dict__.copy()
        elif p in _SGR_FLAGS:
            s.update(_SGR_FLAGS[p])
        elif 30 <= p <= 37:
            s["fg"] = p - 30
        elif 90 <= p <= 97:
            s["fg"] = p - 90 + 8
        elif 40 <= p <= 47:
            s["bg"] = p - 40
        elif 100 <= p <= 107:
            s["bg"] = p - 100 + 8
        elif p == 39:
            s["fg"] = None
        elif p == 49:
            s["bg"] = None
        elif p in (38, 48):
            color, used = _extended(params, i)
            i += used
            if color is not None:
                s["fg" if p == 38 else "bg"] = color
    return Style(**s)


Segment = tuple[str, str]  # (css classes, text)


class Renderer:
    """Turns lines into segments, keeping the SGR state from one line to the next."""

    def __init__(self) -> None:
        self.style = Style()

    def line(self, text: str) -> list[Segment]:
        if text.endswith("\r"):
            text = text.rstrip("\r")  # CRLF: not a redraw
        shown: list[Segment] = []
        previous: list[Segment] = []
        pos = 0
        for part_i, part in enumerate(text.split("\r")):
            if part_i:
                # a redraw: what was drawn so far is replaced by what comes next (if anything comes)
                if shown:
                    previous = shown
                shown = []
            pos = 0
            for m in _ESCAPE.finditer(part):
                if m.start() > pos:
                    self._add(shown, part[pos:m.start()])
                if m.group(3) == "m" and not m.group(2):
                    self.style = apply_sgr(self.style, m.group(1))
                pos = m.end()
            if pos < len(part):
                self._add(shown, part[pos:])
        out = shown or previous
        return _cut(out)

    def _add(self, out: list[Segment], text: str) -> None:
        text = _CONTROL.sub("", text)
        if not text:
            return
        cls = self.style.classes()
        if out and out[-1][0] == cls:
            out[-1] = (cls, out[-1][1] + text)
        else:
            out.append((cls, text))


def _cut(segments: list[Segment]) -> list[Segment]:
    total = sum(len(t) for _, t in segments)
    if total <= MAX_LINE_CHARS:
        return segments
    out: list[Segment] = []
    left = MAX_LINE_CHARS
    for cls, text in segments:
        if left <= 0:
            break
        out.append((cls, text[:left]))
        left -= len(text)
    out.append(("cut", f" … {total - MAX_LINE_CHARS} more characters (see the raw log)"))
    return out


def html_lines(first: int, lines: list[list[Segment]]) -> Markup:
    """Numbered, anchored lines as HTML, every class and text escaped by markupsafe (Jinja2's own
    escaping). Built here, off the event loop, rather than by the template: a page holds
    thousands of lines, and rendering them in the template would hold the loop for tens of ms."""
    out = []
    for n, segs in enumerate(lines, first):
        parts = [f'<span class="ln" id="L{n}"><a href="#L{n}" class="n">{n}</a>']
        for cls, text in segs:
            parts.append(f'<span class="{escape(cls)}">{escape(text)}</span>' if cls else str(escape(text)))
        parts.append("\n</span>")
        out.append("".join(parts))
    return Markup("".join(out))


# -- what the page lists above the log ----------------------------------------------------------
@dataclass(frozen=True)
class Mark:
    line: int             # 1-based line of the log
    level: str            # "failure" | "warning" | "notice"
    title: str
    message: str
    where: str            # "src/app.py:10", or "" for a command without a file

    def to_json(self) -> dict[str, object]:
        return {"line": self.line, "level": self.level, "title": self.title, "message": self.message,
                "where": self.where}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Mark":
        return cls(line=int(d["line"]), level=str(d["level"]), title=str(d.get("title") or ""),
                   message=str(d.get("message") or ""), where=str(d.get("where") or ""))


@dataclass
class Marks:
    """Fed every line in order; collects annotations (with their line) and the test counts."""
    marks: list[Mark] = field(default_factory=list)
    tests: str = ""
    dropped: int = 0
    _stop: str | None = None
    _workspace: str | None = None

    def feed(self, lineno: int, raw: str) -> None:
        if "::" not in raw and "litci-" not in raw:
            return  # the common case, cheaply
        if len(raw) > ann.MAX_LINE_CHARS:
            return
        line = _ESCAPE.sub("", raw).strip()
        if self._stop is not None:
            if line == f"::{self._stop}::":
                self._stop = None
            return
        if line.startswith("::stop-commands::"):
            self._stop = line[len("::stop-commands::"):] or None
            return
        if line.startswith("litci-workspace: /"):
            self._workspace = line[len("litci-workspace: "):]
            return
        if line.startswith("litci-tests: "):
            counts = ann.tests_counts(line)
            if counts is not None:
                p, f, s, e = counts
                self.tests = f"{p} passed, {f} failed, {s} skipped, {e} errors"
            return
        if not line.startswith("::"):
            return
        a = ann.parse_command(line)
        if a is None:
            return
        if len(self.marks) >= MAX_MARKS:
            self.dropped += 1
            return
        where = ""
        if a.path:
            path = ann.repo_path(a.path, self._workspace) or a.path
            where = f"{path}:{a.start_line}" if a.start_line else path
        self.marks.append(Mark(lineno, a.level, a.title or "", a.message, where))

    def feed_all(self, lines: Iterable[str], first: int = 1) -> "Marks":
        for i, line in enumerate(lines, first):
            self.feed(i, line)
        return self
