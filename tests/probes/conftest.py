"""Fixtures for the probe tests: a real HTTP server on loopback and a private PKI."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.probes.servers import HttpServer, Pki, make_pki


@pytest.fixture
def server() -> Iterator[HttpServer]:
    with HttpServer() as srv:
        yield srv


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))

