"""The advisory-lock namespace rollbackd's PostgreSQL locks share, apart from psycopg.

(rollbackd/daemon/cluster needs it at import; a daemon with a SQLite journal must not load psycopg.)
"""

NAMESPACE = 0x726F6C6C
"""First half of every advisory-lock key rollbackd takes ("roll"); the cluster uses the next ones."""
MIGRATE_KEY = (NAMESPACE, 2)
"""Held while one instance creates or upgrades the schema; the others wait for it."""
