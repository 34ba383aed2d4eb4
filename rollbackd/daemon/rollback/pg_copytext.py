"""The script pg_restore writes for one TABLE DATA entry (`pg_restore -L <entry> -f -`), parsed
without I/O: the session settings, the `COPY ... FROM stdin` statement, then the rows in COPY text
format up to the end-of-data line `\\.`, then a short trailer.

The settings and the statement are replayed on rollbackd's own connections exactly as pg_restore
would send them, and the rows are cut at line ends into large chunks, so that several connections
can COPY one table at once: in COPY text format a row never holds a raw newline (pg_dump writes a
newline inside a value as `\\n`, a backslash as `\\\\`), so every newline ends a row and a line that
is exactly `\\.` can only be the end of the data.
"""

from __future__ import annotations

from dataclasses import dataclass

END = b"\\.\n"
"""The end-of-data line of COPY text format."""

TAIL = 64 * 1024
"""Bytes always held back until the end of the stream: the end-of-data line is followed only by
pg_restore's trailer (a comment and `\\unrestrict <key>`, about 150 bytes), so it is always
among the last TAIL bytes and never inside a chunk already sent."""

MAX_HEADER = 1 << 20
COPY_END = b" FROM stdin;\n"

Chunk = tuple[memoryview, ...]
"""Whole rows, in pieces: written to the server one piece after the other, never joined."""


class CopyTextError(Exception):
    """pg_restore's output is not one COPY of one table."""


@dataclass(frozen=True)
class CopyHeader:
    settings: tuple[str, ...]
    """The SET and set_config statements before the COPY, in order."""
    statement: str
    """`COPY <schema>.<table> (<columns>) FROM stdin`, without the semicolon."""
    table: str
    """`<schema>.<table>` quoted as pg_dump quotes it (text for to_regclass and TRUNCATE)."""


def _outside_quotes(text: bytes, start: int, end: int) -> bool:
    """Whether text[end] lies outside double quotes, counting from `start` (a doubled quote inside
    a quoted identifier toggles twice, so counting quotes is enough)."""
    return text.count(b'"', start, end) % 2 == 0


def parse_header(text: bytes) -> tuple[CopyHeader, int] | None:
    """The header and the offset where the rows start, or None while the COPY line is not complete
    yet. The COPY line is the first line that starts with `COPY `; the statement ends at the first
    ` FROM stdin;` + newline outside quoted identifiers (a table's name may hold either)."""
    at = 0 if text.startswith(b"COPY ") else text.find(b"\nCOPY ") + 1
    end = text.find(COPY_END, at) if at > 0 or text.startswith(b"COPY ") else -1
    while end >= 0 and not _outside_quotes(text, at, end):
        end = text.find(COPY_END, end + 1)
    if end < 0:
        if len(text) > MAX_HEADER:
            raise CopyTextError("no COPY statement in the first MiB of pg_restore's output")
        return None
    name_start = at + len(b"COPY ")
    name_end = name_start
    while not (text[name_end] == 0x20 and _outside_quotes(text, name_start, name_end)):
        name_end += 1  # stops at the latest at the space of " FROM stdin;"
    header = CopyHeader(settings=_statements(text[:at].decode()),
                        statement=text[at:end + len(b" FROM stdin")].decode(),
                        table=text[name_start:name_end].decode())
    return header, end + len(COPY_END)


def _statements(preamble: str) -> tuple[str, ...]:
    """SQL statements of the preamble: not comments, not psql meta-commands (`\\restrict`)."""
    out: list[str] = []
    current: list[str] = []
    for line in preamble.splitlines():
        if not current and (not line.strip() or line.startswith(("--", "\\"))):
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            out.append("\n".join(current))
            current = []
    if current:
        raise CopyTextError(f"an unterminated statement before the COPY: {current[0][:60]!r}")
    return tuple(out)


class RowChunks:
    """Cuts the rows, as they arrive, into chunks of about `size` bytes that end at a line end, and
    at the end finds the end-of-data line. What was read is sliced, never copied, except the last
    few MiB at the end.

    Invariant: the bytes held start at a line start (the rows start right after the COPY line,
    and every cut is just after a newline)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._parts: list[tuple[bytes, int, int]] = []  # (data, offset, length)
        self._last_nl: list[int] = []  # per part: its last newline (relative), -1 if none
        self._no_nl_from = 0  # no newline in [size, this) of what is held: a long row
        self.held = 0
        self.fed = 0

    def feed(self, data: bytes) -> list[Chunk]:
        if not data:
            return []
        self._parts.append((data, 0, len(data)))
        self._last_nl.append(data.rfind(b"\n"))
        self.held += len(data)
        self.fed += len(data)
        out = []
        while self.held >= self.size + TAIL and (chunk := self._cut()) is not None:
            out.append(chunk)
        return out

    def _cut(self) -> Chunk | None:
        """About `size` bytes: up to the last newline before `size`, or for a row longer than
        that the first newline after it; at least TAIL bytes always stay behind."""
        limit = self.held - TAIL
        want = min(self.size, limit)
        at = self._last_newline_before(want)
        if at is None:
            at = self._first_newline_in(max(want, self._no_nl_from), limit)
            if at is None:
                self._no_nl_from = limit
                return None  # a row longer than what is held: wait for its end
        self._no_nl_from = 0
        return self._take(at + 1)

    def _last_newline_before(self, end: int) -> int | None:
        pos, found = 0, None
        for (data, off, n), last in zip(self._parts, self._last_nl, strict=True):
            if pos >= end:
                break
            if pos + n <= end:
                if last >= 0:
                    found = pos + last
            else:
                i = data.rfind(b"\n", off, off + end - pos)
                if i >= 0:
                    found = pos + i - off
            pos += n
        return found

    def _first_newline_in(self, start: int, end: int) -> int | None:
        pos = 0
        for data, off, n in self._parts:
            if pos + n > start and pos < end:
                i = data.find(b"\n", off + max(start - pos, 0), off + min(end - pos, n))
                if i >= 0:
                    return pos + i - off
            pos += n
        return None

    def _take(self, k: int) -> Chunk:
        """The first k bytes held, as slices of what was fed."""
        pieces: list[memoryview] = []
        while k > 0:
            data, off, n = self._parts[0]
            if n <= k:
                pieces.append(memoryview(data)[off:off + n])
                self._parts.pop(0)
                self._last_nl.pop(0)
                k -= n
                self.held -= n
            else:
                pieces.append(memoryview(data)[off:off + k])
                last = self._last_nl[0]
                self._parts[0] = (data, off + k, n - k)
                self._last_nl[0] = last - k if last >= k else -1
                self.held -= k
                k = 0
        return tuple(pieces)

    def end(self) -> Chunk:
        """The rows held before the end-of-data line; raises when there is no such line."""
        data = b"".join(memoryview(d)[o:o + m] for d, o, m in self._parts)
        self._parts, self._last_nl, self.held = [], [], 0
        if data.startswith(END):
            return ()
        at = data.find(b"\n" + END)
        if at < 0:
            raise CopyTextError("pg_restore's output ends without the end-of-data line")
        return (memoryview(data)[:at + 1],)
