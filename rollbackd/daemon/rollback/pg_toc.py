"""A pg_dump archive's table of contents (`pg_restore -l`) cut into the lists a restore in
sections gives to `pg_restore -L`, in the order pg_restore itself would restore them.

pg_restore restores in passes: every object, then the privileges (ACL, DEFAULT ACL), then
materialized view data and event triggers. `--section` alone would break that order: an entry
without a section of its own (an ACL, a COMMENT) belongs to the section of the entry before it in
the archive, so the pre-data run would grant and revoke before the data is loaded (a REVOKE from
the owner would then refuse the owner's COPY; DEFAULT PRIVILEGES would apply to the objects made
after them). So the privileges are taken out of every section (they are what `pg_restore -x`
leaves out) and restored with the post-data, whose run puts them in its ACL pass, after every
object, as a single pg_restore run would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PG_CLASS = 1259
"""pg_class's oid: the catalog of a TABLE entry's id."""

_LINE = re.compile(r"^(\d+); (\d+) (\d+) (.*)$")


@dataclass(frozen=True)
class Entry:
    line: str
    """The listing's line, as `pg_restore -L` reads it (only the leading dump id counts)."""
    catalog: int
    """The oid of the system catalog the object is in (0 for data, comments, ACLs)."""
    oid: int
    """The object's oid in the dumped database (for TABLE DATA: its table's)."""
    rest: str
    """Type, schema, name and owner, as printed (names unquoted: for messages only)."""

    @property
    def is_table_data(self) -> bool:
        return self.catalog == 0 and self.oid != 0 and self.rest.startswith("TABLE DATA ")


def entries(listing: str) -> list[Entry]:
    out = []
    for line in listing.splitlines():
        m = _LINE.match(line)
        if m:  # not a ';' comment nor a blank line
            out.append(Entry(line, int(m[2]), int(m[3]), m[4]))
    return out


@dataclass(frozen=True)
class TableData:
    entry: Entry
    created: bool
    """Its table is created by this restore's pre-data, so it is empty until this entry is loaded:
    pg_restore then wraps the COPY in TRUNCATE (and so may rollbackd, with FREEZE). A table made by
    something else, e.g. an extension's configuration table, may already hold rows."""


@dataclass(frozen=True)
class Sections:
    pre: list[str]
    table_data: list[TableData]
    other_data: list[str]
    """Data that is not a table's: sequence values, large objects."""
    post: list[str]
    """The post-data, then every privilege entry in archive order."""


def sections(full: str, pre: str, data: str, post: str) -> Sections:
    """From `pg_restore -l` and `pg_restore -l -x --section=...` of each section."""
    pre_e, data_e, post_e = entries(pre), entries(data), entries(post)
    sectioned = {e.line for e in (*pre_e, *data_e, *post_e)}
    acls = [e.line for e in entries(full) if e.line not in sectioned]
    created = {e.oid for e in pre_e if e.catalog == PG_CLASS}
    return Sections(
        pre=[e.line for e in pre_e],
        table_data=[TableData(e, e.oid in created) for e in data_e if e.is_table_data],
        other_data=[e.line for e in data_e if not e.is_table_data],
        post=[e.line for e in post_e] + acls,
    )
