"""A dump restored into a new database in sections, the table data on rollbackd's own COPY streams.

`pg_restore -j` loads each table with a single COPY, so a dump whose size is one big table restores
at the speed of one backend, and its check then scans every table again with count(*). Here:

1. pre-data: `pg_restore -L` of the schema (tables, types, functions, ...) without privileges;
2. data: every TABLE DATA entry is decoded by `pg_restore -L <entry> -f -` and COPYed on our own
   connections, with pg_restore's own session settings. A table with more than `split_at` bytes of
   rows is cut at row boundaries over `streams` concurrent COPYs (one table, several backends);
   a smaller one goes in one transaction as TRUNCATE + COPY ... FREEZE when the restore created the
   table (pg_restore -j already wraps it in TRUNCATE + COPY; FREEZE writes the rows frozen and the
   pages all-visible, so neither the index builds nor the first VACUUM rewrite every page). The
   other data entries (sequence values, large objects) go through `pg_restore -L`, beside them;
3. post-data: `pg_restore -L -j` of the indexes, constraints, triggers, then the privileges.

The rows of each table come back from the server as COPY command tags: exact counts, which the
verification uses instead of scanning the tables again (see `figures`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import psycopg
from psycopg import sql

from rollbackd.daemon.backup.pg import Pg, PgError, one_line
from rollbackd.daemon.rollback.base import StepFailed
from rollbackd.daemon.rollback.commands import run_argv
from rollbackd.daemon.rollback.pg_copytext import Chunk, CopyHeader, CopyTextError, RowChunks, parse_header
from rollbackd.daemon.rollback.pg_toc import Sections, TableData, sections

CHUNK = 1 << 20
"""Bytes of rows a stream takes at a time (~9,000 pgbench rows): fine enough that the streams of a
table end together, coarse enough that handing out chunks costs nothing. (At pgbench scale 70, on
2 cores: 1 MiB 4.39 s, 2 MiB 4.51 s, 4 MiB 4.55 s, the mean of 4 restores each.)"""
READ = 1 << 20
PIPE_SIZE = 1 << 20
"""pg_restore's pipe: what piles up between two reads (the default 64 KiB means small reads)."""
PACE = 0.001
"""After a read that did not fill READ, wait this long before the next one, so that it finds a
full pipe: pg_restore decodes ~1 GiB/s, several times faster than the COPYs take the rows, so
the streams never wait for it (a chunk or two is always queued) and the reads stay large."""
SPLIT_AT = 16 << 20
"""A table with more bytes of rows than this is split over several streams; a smaller one is read
whole first and goes in one TRUNCATE + COPY FREEZE."""


@dataclass(frozen=True)
class Loaded:
    table: str
    """The COPY's target as the dump names it."""
    oid: int | None
    """The table's oid in the new database."""
    rows: int
    streams: int
    frozen: bool
    created: bool


@dataclass
class Restored:
    """What a restore of a dump did: how (for the step's message), the exact rows each table the
    restore created received, by oid (empty: count them), and the seconds of each phase."""

    how: str
    rows: dict[int, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


class LoadFailed(Exception):
    """Loading one table's data failed; the message is one line."""


async def restore_in_sections(pg: Pg, path: Path, target: str, env: dict[str, str], jobs: int,
                              streams: int, timeout: float, split_at: int | None = None
                              ) -> Restored:
    """Restore the dump at `path` into the empty database `target`; raises StepFailed."""
    split_at = SPLIT_AT if split_at is None else split_at
    tool = pg.tool("pg_restore")
    seconds: dict[str, float] = {}
    plan = await _plan(tool, path, timeout)
    with TemporaryDirectory(prefix="rollbackd-restore-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        await _restore_listed(tool, path, target, env, work / "pre.list", plan.pre, 1,
                              "schema", timeout)
        seconds["pre-data"] = time.perf_counter() - started
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                loaded = await _load_data(pg, tool, path, target, env, work, plan, jobs,
                                          streams, split_at, timeout)
        except TimeoutError:
            raise StepFailed(f"pg_restore into {target} failed: loading the data timed out "
                             f"after {timeout:g}s; the current database is untouched") from None
        except LoadFailed as exc:
            raise StepFailed(f"pg_restore into {target} failed: {exc}; the current database "
                             "is untouched") from None
        seconds["data"] = time.perf_counter() - started
        started = time.perf_counter()
        await _restore_listed(tool, path, target, env, work / "post.list", plan.post, jobs,
                              "indexes, constraints and privileges", timeout)
        seconds["post-data"] = time.perf_counter() - started
    rows: dict[int, int] = {}
    for t in loaded:
        if t.created and t.oid is not None:
            rows[t.oid] = rows.get(t.oid, 0) + t.rows
    split = [t for t in loaded if t.streams > 1]
    how = (f"{path.name} in sections: the schema by pg_restore, {len(loaded)} table(s) COPYed "
           f"by rollbackd ({len(split)} split over {streams} streams, "
           f"{sum(t.frozen for t in loaded)} frozen), pg_restore -j {jobs} of the indexes, "
           "constraints and privileges")
    return Restored(how, rows, seconds)


async def _plan(tool: str, path: Path, timeout: float) -> Sections:
    async def listing(*opts: str) -> str:
        try:
            return (await run_argv([tool, "-l", *opts, str(path)], timeout)).output
        except StepFailed as exc:
            raise StepFailed(f"pg_restore -l of {path.name} failed: {one_line(exc, 300)}; the "
                             "current database is untouched") from None

    full, pre, data, post = await asyncio.gather(
        listing(), *(listing("-x", f"--section={s}") for s in ("pre-data", "data", "post-data")))
    return sections(full, pre, data, post)


async def _restore_listed(tool: str, path: Path, target: str, env: dict[str, str],
                          listfile: Path, lines: list[str], jobs: int, what: str, timeout: float
                          ) -> None:
    """`pg_restore -L` of these listing lines into `target` (in pg_restore's own order and
    passes: its objects, then the privileges, then materialized view data)."""
    if not lines:
        return
    listfile.write_text("\n".join(lines) + "\n")
    argv = [tool, "-L", str(listfile), "--exit-on-error", "-d", target, str(path)]
    if jobs > 1:
        argv[1:1] = ["-j", str(jobs)]
    try:
        await run_argv(argv, timeout, env=env)
    except StepFailed as exc:
        raise StepFailed(f"pg_restore into {target} failed: {what}: {one_line(exc, 300)}; "
                         "the current database is untouched") from None


async def _load_data(pg: Pg, tool: str, path: Path, target: str, env: dict[str, str], work: Path,
                     plan: Sections, jobs: int, streams: int, split_at: int, timeout: float
                     ) -> list[Loaded]:
    """Every table's data, `jobs` tables at a time, beside the other data entries. The first
    failure cancels the rest (their COPYs are aborted, their pg_restore killed)."""
    gate = asyncio.Semaphore(jobs)

    async def table(n: int, td: TableData) -> Loaded:
        async with gate:
            listfile = work / f"data{n}.list"
            listfile.write_text(td.entry.line + "\n")
            named = [td.entry.rest]  # the listing's words, until the COPY statement names it
            try:
                # With one stream there is nothing to decide: no need to read ahead.
                return await _load_table(pg, tool, path, target, listfile, td, streams,
                                         split_at if streams > 1 else 0, named)
            except (psycopg.Error, PgError, CopyTextError, OSError, ValueError) as exc:
                # pg_restore's own words for it, so that a failure reads the same either way
                raise LoadFailed(f"COPY failed for table {named[-1]}: "
                                 f"{one_line(exc, 300)}") from None

    async def other() -> None:
        async with gate:  # raises StepFailed, whole
            await _restore_listed(tool, path, target, env, work / "other.list",
                                  plan.other_data, 1, "sequence values and large objects",
                                  timeout)

    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(table(n, td)) for n, td in enumerate(plan.table_data)]
            tg.create_task(other())
    except BaseExceptionGroup as group:
        raise _first(group) from None
    return [t.result() for t in tasks]


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that failed the group (the others are the cancellations it caused)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]


async def _load_table(pg: Pg, tool: str, path: Path, target: str, listfile: Path, td: TableData,
                      streams: int, split_at: int, named: list[str]) -> Loaded:
    """One TABLE DATA entry; appends the table's name to `named` once its COPY is read."""
    rows_out = _Decoder.start(tool, listfile, path)
    try:
        header, rows, ready, ended = await _read_ahead(rows_out, split_at)
        named.append(header.table)
        n = 1 if ended else streams
        queue: asyncio.Queue[Chunk | None] = asyncio.Queue(maxsize=2 * n)
        # Every stream's COPY open before any takes a chunk: a COPY's writes return as soon as
        # its socket takes them, so the first one ready could swallow a table of a few MiB.
        started = asyncio.Barrier(n)
        async with contextlib.AsyncExitStack() as opened:
            conns = [await opened.enter_async_context(await pg.connect(target))
                     for _ in range(n)]
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_feed(rows_out, rows, ready, ended, queue, n))
                copies = [tg.create_task(_copy(conn, header, queue, n == 1 and td.created,
                                               started)) for conn in conns]
    except BaseExceptionGroup as group:
        raise _first(group) from None
    finally:
        rows_out.close()
    results = [c.result() for c in copies]
    return Loaded(header.table, results[0][0], sum(r[1] for r in results), n, results[0][2],
                  td.created)


class _Decoder:
    """`pg_restore -L <one entry> -f -`: the archive's rows of one table as COPY text, read from a
    pipe of our own only when a stream wants more. (asyncio's pipe transport reads every 4 KiB
    write of pg_restore as it lands: ~170,000 wake-ups and syscalls per GiB, as much CPU as the
    decoding itself; read on demand, each read takes the whole pipe.)

    Started without an await, so that no cancellation can come between the process and the
    object that kills it; its errors go to a file beside its list."""

    def __init__(self, proc: subprocess.Popen[bytes], fd: int, errors: Path) -> None:
        self.proc = proc
        self._fd = fd
        self._errors = errors
        self._short = False

    @classmethod
    def start(cls, tool: str, listfile: Path, path: Path) -> _Decoder:
        errors = listfile.with_suffix(".err")
        r, w = os.pipe()
        try:
            with contextlib.suppress(OSError):  # past /proc/sys/fs/pipe-max-size: keep 64 KiB
                fcntl.fcntl(w, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)
            with errors.open("wb") as err:
                proc = subprocess.Popen(
                    [tool, "-L", str(listfile), "-f", "-", str(path)],
                    stdin=subprocess.DEVNULL, stdout=w, stderr=err, start_new_session=True)
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
        os.set_blocking(r, False)
        return cls(proc, r, errors)

    async def read(self) -> bytes:
        """Up to READ bytes, b"" at the end; raises when pg_restore failed."""
        if self._short:
            await asyncio.sleep(PACE)
        while True:
            try:
                data = os.read(self._fd, READ)
            except BlockingIOError:
                await self._readable()
                continue
            if not data:
                while self.proc.poll() is None:  # it exits as it closes its output
                    await asyncio.sleep(PACE)
                if self.proc.returncode != 0:
                    why = self._errors.read_text(errors="replace")
                    raise ValueError(f"pg_restore exited {self.proc.returncode}: "
                                     f"{one_line(why, 200)}")
            self._short = len(data) < READ
            return data

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(self._fd, wake)
        try:
            await ready
        finally:
            loop.remove_reader(self._fd)

    def close(self) -> None:
        """Kill pg_restore if it still runs (a failed or cancelled load), release the pipe.
        Without an await: after SIGKILL the wait is a matter of milliseconds."""
        try:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        finally:
            os.close(self._fd)


async def _read_ahead(source: _Decoder, split_at: int
                      ) -> tuple[CopyHeader, RowChunks, list[Chunk], bool]:
    """The header, then rows until `split_at` bytes or the end: whether to split is known before
    the first COPY starts (a COPY FREEZE must be the only one into its table)."""
    head = b""
    parsed = None
    while parsed is None:
        data = await source.read()
        if not data:
            raise ValueError("pg_restore wrote no COPY statement")
        head += data
        parsed = parse_header(head)
    header, start = parsed
    rows = RowChunks(CHUNK)
    ready = rows.feed(head[start:])
    while rows.fed <= split_at:
        data = await source.read()
        if not data:
            return header, rows, [*ready, rows.end()], True
        ready += rows.feed(data)
    return header, rows, ready, False


async def _feed(source: _Decoder, rows: RowChunks, ready: list[Chunk], ended: bool,
                queue: asyncio.Queue[Chunk | None], streams: int) -> None:
    """Chunks to whichever stream is free, then one end mark per stream."""
    for chunk in ready:
        await queue.put(chunk)
    while not ended:
        data = await source.read()
        if not data:
            await queue.put(rows.end())
            break
        for chunk in rows.feed(data):
            await queue.put(chunk)
    for _ in range(streams):
        await queue.put(None)


async def _copy(conn: psycopg.AsyncConnection[Any], header: CopyHeader,
                queue: asyncio.Queue[Chunk | None], freeze: bool, started: asyncio.Barrier
                ) -> tuple[int | None, int, bool]:
    """One COPY stream on its own connection: (the table's oid, rows, whether frozen)."""
    # The new database is nobody's until verified and swapped in: no wait for each commit
    # to reach the disk (flushed at the latest by the swap's own commit).
    await conn.execute("SET synchronous_commit = off")
    for statement in header.settings:  # pg_restore's own: encoding, search_path '', ...
        await conn.execute(statement)
    cur = await conn.execute("SELECT c.oid::int8, c.relkind::text FROM pg_class c "
                             "WHERE c.oid = to_regclass(%s)", (header.table,))
    row = await cur.fetchone()
    oid = int(row[0]) if row else None
    freeze = freeze and row is not None and row[1] == "r"  # not a partitioned root
    statement = header.statement + (" WITH (FREEZE)" if freeze else "")
    async with conn.transaction():
        if freeze:
            await conn.execute(sql.SQL("TRUNCATE ONLY {}").format(sql.SQL(header.table)))
        async with conn.cursor() as c:
            async with c.copy(statement) as copy:
                await started.wait()
                while (chunk := await queue.get()) is not None:
                    for piece in chunk:
                        await copy.write(piece)
                    # Neither a get from a queue that has a chunk nor a write that the socket
                    # takes suspends: without this, one stream would take chunk after chunk.
                    await asyncio.sleep(0)
            rows = c.rowcount
    return oid, rows, freeze


def restore_env(pg: Pg, target: str, work_mem: str) -> dict[str, str]:
    """pg_restore's environment for `target`: the DSN's PG* variables, plus session settings for a
    database nobody uses yet: index builds sorted in memory, commits not waited for."""
    env = pg.env(target)
    env["PGOPTIONS"] = " ".join(filter(None, (
        env.get("PGOPTIONS"), f"-c maintenance_work_mem={work_mem}",
        "-c synchronous_commit=off")))
    return env
