"""CURVE key files for the bridge (zmq.auth certificate format).

Layout of a key folder (made by `spinert serve-keys DIR`):

    DIR/server.key            server public key   (give to every client)
    DIR/server.key_secret     server key pair     (stays on the server)
    DIR/clients/NAME.key      authorised client public keys: the server accepts exactly these
    DIR/clients/NAME.key_secret  the client's key pair: move it to the robot controller

`spinert serve --curve-keys DIR` encrypts both sockets and admits only clients whose public key is in
DIR/clients/ (ZAP via zmq.auth.ThreadAuthenticator).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from engine.errors import InputError, OutputExistsError

SERVER = "server"
CLIENTS = "clients"


@dataclass(frozen=True)
class CurveClientKeys:
    """What a client needs: its own key pair and the server's public key (Z85 bytes)."""

    public: bytes
    secret: bytes
    server_public: bytes

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.curve_serverkey = self.server_public


@dataclass(frozen=True)
class CurveServerKeys:
    public: bytes
    secret: bytes
    clients_dir: Path

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.curve_server = True


def generate_keys(folder: str | os.PathLike, clients=("robot",), overwrite: bool = False) -> list[Path]:
    """Writes a server key pair and one key pair per client name. Returns the files written."""
    if not zmq.has("curve"):
        raise InputError("this libzmq was built without CURVE support")
    root = Path(folder)
    cdir = root / CLIENTS
    planned = [root / f"{SERVER}.key", root / f"{SERVER}.key_secret"]
    for name in clients:
        if not name or "/" in name or name.startswith("."):
            raise InputError(f"bad client name {name!r}")
        planned += [cdir / f"{name}.key", cdir / f"{name}.key_secret"]
    existing = [p for p in planned if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{existing[0]} exists (use --overwrite to replace it)")
    cdir.mkdir(parents=True, exist_ok=True)
    zmq.auth.create_certificates(root, SERVER)
    for name in clients:
        zmq.auth.create_certificates(cdir, name)
    for p in planned:
        if p.name.endswith(".key_secret"):
            p.chmod(0o600)
    return planned


def _load(path: Path, need_secret: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise InputError(f"{path}: key file not found (make keys with `spinert serve-keys DIR`)")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: not a zmq certificate file ({exc})") from None
    if need_secret and not secret:
        raise InputError(f"{path}: holds no secret key")
    return public, secret


def load_server_keys(folder: str | os.PathLike) -> CurveServerKeys:
    root = Path(folder)
    public, secret = _load(root / f"{SERVER}.key_secret", need_secret=True)
    cdir = root / CLIENTS
    if not cdir.is_dir() or not any(cdir.glob("*.key")):
        raise InputError(f"{cdir}: no authorised client keys (*.key); no client could connect")
    return CurveServerKeys(public, secret, cdir)


def load_client_keys(folder: str | os.PathLike, client: str = "robot") -> CurveClientKeys:
    """Client keys from a key folder laid out as above (or a folder holding server.key and NAME.key_secret)."""
    root = Path(folder)
    server_public, _ = _load(root / f"{SERVER}.key", need_secret=False)
    own = root / CLIENTS / f"{client}.key_secret"
    if not own.is_file():
        own = root / f"{client}.key_secret"
    public, secret = _load(own, need_secret=True)
    return CurveClientKeys(public, secret, server_public)
