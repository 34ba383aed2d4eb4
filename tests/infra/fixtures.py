"""Pytest fixtures for real servers: Docker, PostgreSQL and Redis. A pytest plugin.

Registered for the whole suite by `pytest_plugins = ["tests.infra.fixtures"]` in tests/conftest.py
(and by tests/infra/conftest.py for the tests beside it). It overrides the default
`postgresql_proc`/`postgresql` and `redis_proc`/`redisdb` of pytest-postgresql and pytest-redis:

- `docker` (session): docker SDK client for the private dockerd of scripts/services.
- `docker_containers`: a ContainerRunner; every container it ran is removed after the test.
- `postgresql_proc` (session): a throwaway PostgreSQL cluster of its own (initdb in a temporary
  directory, 127.0.0.1 on a free port, trust auth, user postgres), never the machine's :5432.
  `postgresql`: a psycopg connection to a fresh database `tests` cloned from a template per test.
- `redis_proc` (session): a redis-server of its own on 127.0.0.1 and a free port, never :6379;
  `with redis_proc.stopped(): ...` stops it and starts it again on the same port.
  `redisdb`: a redis client to it, flushed after each test.

Nothing skips: a part that is missing fails the test with the way to get it (scripts/services).
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import docker as docker_sdk
import pytest
from pytest_postgresql import factories as pg_factories
from pytest_postgresql.executors import PostgreSQLExecutor
from pytest_postgresql.janitor import DatabaseJanitor
from pytest_redis import factories as redis_factories
from pytest_redis.executor import RedisExecutor

from tests.infra.services import (
    REDIS_SERVER,
    ContainerRunner,
    docker_client,
    free_port,
    pg_ctl_path,
    redis_server_path,
)


@pytest.fixture(scope="session", name="docker")
def docker_fixture() -> Iterator[docker_sdk.DockerClient]:
    client = docker_client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def docker_containers(docker: docker_sdk.DockerClient) -> Iterator[ContainerRunner]:
    with ContainerRunner(docker) as runner:
        yield runner


def _pg_ctl_for_this_user(base: Path, cluster: Path) -> str:
    """pg_ctl, or as root a wrapper that runs it as the `postgres` user.

    PostgreSQL refuses to run as root (initdb and postgres both exit), and the tests run as root
    here. The wrapper lives in root-owned `base`; only `cluster` (data, log, socket) belongs to
    postgres.
    """
    pg_ctl = pg_ctl_path()
    if os.geteuid() != 0:
        return str(pg_ctl)
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise RuntimeError("running as root, PostgreSQL needs the `postgres` user to run as; "
                           "it comes with the postgresql package (scripts/services)") from exc
    base.chmod(0o711)
    os.chown(cluster, owner.pw_uid, owner.pw_gid)
    wrapper = base / "pg_ctl"
    wrapper.write_text("#!/bin/sh\n# pg_ctl as postgres: PostgreSQL does not run as root\n"
                       f"cd / && exec setpriv --reuid={owner.pw_uid} --regid={owner.pw_gid} --init-groups "
                       f"-- {pg_ctl} \"$@\"\n")
    wrapper.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    return str(wrapper)


@pytest.fixture(scope="session")
def postgresql_proc() -> Iterator[PostgreSQLExecutor]:
    """A PostgreSQL cluster of the tests' own, with pytest-postgresql's executor and janitor.

    (pytest-postgresql's own process factory puts the cluster under pytest's root-only temporary
    directory, where the postgres user cannot reach it, so this builds the same thing on a
    directory of its own.)
    """
    base = Path(tempfile.mkdtemp(prefix="rollbackd-test-pg-"))
    cluster = base / "cluster"
    cluster.mkdir(mode=0o700)
    executor: PostgreSQLExecutor | None = None
    try:
        executor = PostgreSQLExecutor(
            executable=_pg_ctl_for_this_user(base, cluster),
            host="127.0.0.1",
            port=free_port(),
            datadir=str(cluster / "data"),
            unixsocketdir=str(cluster),
            logfile=str(cluster / "postgresql.log"),
            startparams="-w",
            dbname="tests",
            user="postgres",
            postgres_options="-c listen_addresses=127.0.0.1",
        )
        executor.start()
        executor.wait_for_postgres()
        janitor = DatabaseJanitor(user=executor.user, host=executor.host, port=executor.port,
                                  dbname=executor.template_dbname,
                                  maintenance_dbname=executor.maintenance_dbname, as_template=True)
        janitor.init()
        yield executor
        janitor.drop()
    finally:
        if executor is not None and executor.running():
            executor.stop()
        shutil.rmtree(base, ignore_errors=True)


postgresql = pg_factories.postgresql("postgresql_proc")

# port=None: a free port (pytest-redis documents None, its annotation forgets it)
_redis_server_proc = redis_factories.redis_proc(
    executable=str(REDIS_SERVER), host="127.0.0.1", port=None)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def redis_proc(request: pytest.FixtureRequest) -> RedisExecutor:
    """pytest-redis's own redis-server on 127.0.0.1 and a free port."""
    redis_server_path()
    executor: RedisExecutor = request.getfixturevalue("_redis_server_proc")
    return executor


redisdb = redis_factories.redisdb("redis_proc")
