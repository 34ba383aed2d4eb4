"""Test infrastructure: real servers for the tests (see scripts/services and DESIGN.md).

Helpers are imported from here (`from tests.infra import build_local_image, docker_client`);
the fixtures are the pytest plugin `tests.infra.fixtures`, registered for the whole suite by
`pytest_plugins = ["tests.infra.fixtures"]` in tests/conftest.py.
"""

from tests.infra.services import (
    DOCKER_SOCKET,
    FINGERPRINT_LABEL,
    ContainerRunner,
    ServiceUnavailable,
    build_local_image,
    docker_client,
    free_port,
    pg_ctl_path,
    redis_server_path,
)

__all__ = [
    "DOCKER_SOCKET",
    "FINGERPRINT_LABEL",
    "ContainerRunner",
    "ServiceUnavailable",
    "build_local_image",
    "docker_client",
    "free_port",
    "pg_ctl_path",
    "redis_server_path",
]
