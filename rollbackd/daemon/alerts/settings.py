"""The [alerts] section: where the Alertmanager webhook receiver listens and its bearer token."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, PlainSerializer, PlainValidator, field_validator

from rollbackd.daemon.secrets import SecretValue, load_secret

# As rollbackd.daemon.config's Secret; defined here because rollbackd.daemon.config imports this module.
Secret = Annotated[SecretValue, PlainValidator(load_secret, json_schema_input_type=str),
                   PlainSerializer(str)]


class AlertsSettings(BaseModel):
    """[alerts]: Alertmanager posts to http://<listen>/webhook with `Authorization: Bearer`."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    listen: str = "127.0.0.1:9618"
    """host:port on loopback; Alertmanager runs on this machine (or tunnels to it)."""
    token_file: Secret
    """The bearer token Alertmanager sends (http_config.authorization.credentials_file)."""

    @field_validator("listen")
    @classmethod
    def _loopback(cls, v: str) -> str:
        m = re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[\w.-]+):(\d{1,5})", v)
        if not m or not 0 < int(m.group(2)) < 65536:
            raise ValueError(f"expected host:port such as '127.0.0.1:9618', got {v!r}")
        host = m.group(1).strip("[]")
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"must be a loopback address such as 127.0.0.1 or [::1], got {v!r}")
        return v

    @field_validator("token_file")
    @classmethod
    def _not_empty(cls, v: SecretValue) -> SecretValue:
        if len(v.value.strip()) < 16:
            raise ValueError(f"the token in {v.source} is shorter than 16 characters")
        return v

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])
