"""Where a bridge finds the daemon: its PUB stream, its status endpoint, its NG channel, and the
CURVE keys this client uses when the daemon runs with CURVE. One pydantic model, shared by every
bridge's config, so each one is configured the same way."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from proad.edge.security import ClientKeys, client_keys


class DaemonLink(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=4096)

    endpoint: str = Field("tcp://127.0.0.1:5555", description="the daemon's PUB endpoint (every result)")
    status_endpoint: str | None = Field("tcp://127.0.0.1:5556", description="the daemon's status REP (None: off)")
    ng_channel: str | None = Field(
        None, description="the daemon's reliable NG channel, for a bridge that must deliver every NG (None: off)"
    )
    camera: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="only this camera (None: all)")
    curve_secret_key: str | None = Field(None, description="CURVE: this client's NAME.key_secret")
    server_public_key: str | None = Field(None, description="CURVE: the daemon's public NAME.key")
    hwm: int = Field(1000, ge=1, le=1_000_000, description="receive high-water mark (messages)")

    def keys(self) -> ClientKeys | None:
        """This client's CURVE keys (None: plain); a half-configured pair is a StartupError."""
        return client_keys(self.curve_secret_key, self.server_public_key)
