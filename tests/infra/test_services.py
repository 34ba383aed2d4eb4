"""The real parts the tests use actually work: dockerd, local images, PostgreSQL, Redis."""

from __future__ import annotations

import time
from pathlib import Path

import docker as docker_sdk
import httpx
import psycopg
import pytest
import redis
from pytest_postgresql.executors import PostgreSQLExecutor
from pytest_redis.executor import RedisExecutor
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.infra import (
    DOCKER_SOCKET,
    FINGERPRINT_LABEL,
    ContainerRunner,
    ServiceUnavailable,
    build_local_image,
    docker_client,
    free_port,
)

PIDFILE = Path("/run/rollbackd-test/dockerd.pid")


# --- Docker ----------------------------------------------------------------------------------

def test_dockerd_answers_with_bridge_none(docker: docker_sdk.DockerClient) -> None:
    assert docker.ping()
    info = docker.info()
    assert info["Driver"] in {"overlay2", "vfs", "fuse-overlayfs"}
    networks = {n.name for n in docker.networks.list()}
    assert "bridge" not in networks
    assert {"host", "none"} <= networks
    argv = Path(f"/proc/{PIDFILE.read_text().strip()}/cmdline").read_bytes().split(b"\0")
    assert argv[0].endswith(b"dockerd")
    for flag in (b"--bridge=none", b"--iptables=false", b"--ip-masq=false"):
        assert flag in argv
    assert f"unix://{DOCKER_SOCKET}".encode() in argv


def test_docker_client_names_socket_and_script_when_dockerd_is_down(tmp_path: Path) -> None:
    missing = tmp_path / "no-docker.sock"
    with pytest.raises(ServiceUnavailable) as err:
        docker_client(str(missing))
    assert str(missing) in str(err.value)
    assert "scripts/services" in str(err.value)


def test_local_busybox_image_serves_http_with_host_network(
        docker: docker_sdk.DockerClient, docker_containers: ContainerRunner) -> None:
    files = {"www/index.html": "hello from a local image\n"}
    entrypoint = ["/bin/busybox", "httpd", "-f", "-h", "/www"]
    tag = build_local_image("rollbackd-test/httpd:1", files, entrypoint, client=docker)
    image = docker.images.get(tag)
    assert image.attrs["Size"] < 5_000_000  # one static busybox, nothing pulled
    started = time.monotonic()
    assert build_local_image("rollbackd-test/httpd:1", files, entrypoint, client=docker) == tag
    assert time.monotonic() - started < 2  # cached by tag and content
    assert docker.images.get(tag).id == image.id

    port = free_port()
    container = docker_containers.run(tag, ["-p", f"127.0.0.1:{port}"])
    assert container.attrs["HostConfig"]["NetworkMode"] == "host"
    deadline = time.monotonic() + 15
    while True:
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/index.html", timeout=2)
            break
        except httpx.TransportError:
            container.reload()
            assert container.status == "running", container.logs().decode(errors="replace")
            assert time.monotonic() < deadline, "busybox httpd did not answer within 15 s"
            time.sleep(0.1)
    assert response.status_code == 200
    assert response.text == "hello from a local image\n"


def test_changed_content_rebuilds_the_tag(docker: docker_sdk.DockerClient,
                                          docker_containers: ContainerRunner) -> None:
    tag = "rollbackd-test/cat:1"
    for text in ("first\n", "second\n"):
        build_local_image(tag, {"msg.txt": text}, ["/bin/cat", "/msg.txt"], client=docker)
        container = docker_containers.run(tag)
        assert container.wait(timeout=30)["StatusCode"] == 0
        assert container.logs() == text.encode()
        container.remove()
    # the image that lost its tag is gone too (only our own labelled, unused images are pruned)
    assert docker.images.list(filters={"dangling": True, "label": FINGERPRINT_LABEL}) == []


def test_container_exit_code_and_removal(docker: docker_sdk.DockerClient) -> None:
    script = "#!/bin/sh\necho failing on purpose >&2\nexit 1\n"
    tag = build_local_image("rollbackd-test/exit1:1", {"fail.sh": script}, ["/fail.sh"], client=docker)
    with ContainerRunner(docker) as runner:
        failing = runner.run(tag)
        assert failing.wait(timeout=30)["StatusCode"] == 1
        failing.reload()
        assert failing.status == "exited"
        assert failing.attrs["State"]["ExitCode"] == 1
        assert b"failing on purpose" in failing.logs()
        sleeper = runner.run(tag, entrypoint=["/bin/sleep", "60"])
        sleeper.reload()
        assert sleeper.status == "running"
        assert {c.id for c in runner.containers()} == {failing.id, sleeper.id}
    assert runner.containers() == []
    for container in (failing, sleeper):
        with pytest.raises(docker_sdk.errors.NotFound):
            docker.containers.get(container.id)


# --- PostgreSQL ------------------------------------------------------------------------------

def test_postgresql_is_our_own_server(postgresql_proc: PostgreSQLExecutor,
                                      postgresql: psycopg.Connection) -> None:
    assert postgresql_proc.host == "127.0.0.1"
    assert postgresql_proc.port != 5432
    with postgresql.cursor() as cur:
        cur.execute("SHOW port")
        row = cur.fetchone()
        assert row is not None and int(row[0]) == postgresql_proc.port
        cur.execute("SHOW data_directory")
        row = cur.fetchone()
        assert row is not None and row[0] == postgresql_proc.datadir
    assert "rollbackd-test-pg-" in postgresql_proc.datadir  # ours, not pytest-postgresql's default


def test_postgresql_table_and_amcheck(postgresql: psycopg.Connection) -> None:
    with postgresql.cursor() as cur:
        cur.execute("CREATE TABLE deploys (id serial PRIMARY KEY, version text NOT NULL)")
        cur.executemany("INSERT INTO deploys (version) VALUES (%s)", [("v1",), ("v2",)])
        cur.execute("SELECT version FROM deploys ORDER BY id")
        assert cur.fetchall() == [("v1",), ("v2",)]
        cur.execute("CREATE EXTENSION amcheck")
        cur.execute("SELECT bt_index_check('deploys_pkey'::regclass, true)")
        assert cur.fetchone() == ("",)
    postgresql.commit()


def test_postgresql_database_is_fresh_per_test(postgresql: psycopg.Connection) -> None:
    with postgresql.cursor() as cur:
        cur.execute("SELECT to_regclass('deploys')")
        assert cur.fetchone() == (None,)


# --- Redis -----------------------------------------------------------------------------------

def test_redis_set_get_on_our_own_server(redis_proc: RedisExecutor, redisdb: redis.Redis) -> None:
    assert redis_proc.host == "127.0.0.1"
    assert redis_proc.port != 6379
    assert redisdb.config_get("port") == {"port": str(redis_proc.port)}
    assert redisdb.config_get("bind")["bind"] == "127.0.0.1"
    redisdb.set("rollbackd:test", "known-good")
    assert redisdb.get("rollbackd:test") == b"known-good"


def test_redis_can_be_stopped_mid_test(redis_proc: RedisExecutor, redisdb: redis.Redis) -> None:
    redisdb.set("before", "1")
    with redis_proc.stopped():
        client = redis.Redis(host=redis_proc.host, port=redis_proc.port, socket_connect_timeout=2,
                             retry=Retry(NoBackoff(), 0))  # redis-py retries 3 times by default
        try:
            with pytest.raises(redis.ConnectionError):
                client.ping()
        finally:
            client.close()
    # started again on the same port: a new client connects (the data was not kept)
    client = redis.Redis(host=redis_proc.host, port=redis_proc.port, socket_connect_timeout=5)
    try:
        assert client.ping()
    finally:
        client.close()
