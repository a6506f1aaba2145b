"""CURVE on every socket, with pyzmq's own machinery (``zmq.auth``).

The daemon is the CURVE *server* on each socket it binds (results PUB, NG channel, status): it holds
one keypair, and a ZAP authenticator thread on its context admits only clients whose public key is
a ``*.key`` file in the allowed directory. A refused client's handshake fails, so it receives
nothing; the socket monitor counts the refusal. Clients (subscribers, archivers, ``proad-edge
status``) hold their own keypair and the server's public key.

``proad-edge keys`` writes keypairs in ZeroMQ's certificate format (``NAME.key`` public,
``NAME.key_secret`` secret).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from proad.edge.sockets import StartupError


def _load(path: str | Path, want_secret: bool, what: str) -> tuple[bytes, bytes | None]:
    p = Path(path)
    if not p.is_file():
        raise StartupError(f"{what} {p} not found (create keys with `proad-edge keys`)")
    try:
        public, secret = zmq.auth.load_certificate(p)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise StartupError(f"{what} {p} is not a ZeroMQ certificate: {exc}") from exc
    if want_secret and secret is None:
        raise StartupError(f"{what} {p} holds no secret key (use the .key_secret file)")
    return public, secret


class CurveServer:
    """The server keypair plus the ZAP authenticator that admits the allowed client keys."""

    def __init__(self, server_secret_key: str, allowed_clients: str, ctx: zmq.Context) -> None:
        self.public, self.secret = _load(server_secret_key, True, "server key")
        allowed = Path(allowed_clients)
        if not allowed.is_dir():
            raise StartupError(f"allowed client key directory {allowed} not found")
        if not any(allowed.glob("*.key")):
            raise StartupError(f"no client public keys (*.key) in {allowed}: every client would be refused")
        self.auth = ThreadAuthenticator(ctx)
        self.auth.start()
        self.auth.configure_curve(domain="*", location=str(allowed))

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE server (before bind)."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def close(self) -> None:
        self.auth.stop()


@dataclass(frozen=True)
class ClientKeys:
    """A client's own secret certificate and the daemon's public one."""

    secret_file: Path
    server_public_file: Path

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE client of the daemon (before connect)."""
        public, secret = _load(self.secret_file, True, "client key")
        server_public, _ = _load(self.server_public_file, False, "server public key")
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_serverkey = server_public


def client_keys(secret_file: str | Path | None, server_public_file: str | Path | None) -> ClientKeys | None:
    """Both given: CURVE; neither: plain; one of them: an error (a half-configured client never connects)."""
    if secret_file is None and server_public_file is None:
        return None
    if secret_file is None or server_public_file is None:
        raise StartupError("CURVE needs both the client's secret key and the server's public key")
    return ClientKeys(Path(secret_file), Path(server_public_file))


def create_keypair(out_dir: str | Path, name: str, allowed_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` in ``out_dir``; copy the public one into ``allowed_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / f"{name}.key_secret").exists():
        raise FileExistsError(f"{out / name}.key_secret exists; refusing to overwrite a key")
    public, secret = zmq.auth.create_certificates(out, name)
    Path(secret).chmod(0o600)
    if allowed_dir is not None:
        Path(allowed_dir).mkdir(parents=True, exist_ok=True)
        shutil.copy(public, Path(allowed_dir) / Path(public).name)
    return Path(public), Path(secret)
