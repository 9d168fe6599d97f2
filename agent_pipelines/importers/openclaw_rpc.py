"""A small client of OpenClaw's gateway WebSocket RPC: connect, then `cron.*` calls.

One connection per gateway carries every call (listing hundreds of jobs and turning them off
takes milliseconds each, where a CLI process per call takes seconds). The handshake is
OpenClaw 2026.9's (packages/gateway-client): wait for `connect.challenge`, answer `connect`
with the shared token and a device identity, an Ed25519 key whose id is the SHA-256 of its raw
public key and whose signature covers the v3 payload
`v3|<device>|<client>|<mode>|<role>|<scopes>|<challenge ts>|<token>|<nonce>|<platform>|<family>`.
Without a device identity the gateway clears the connection's scopes.

The key is kept in `$AGENT_PIPELINES_OPENCLAW_IDENTITY` (default
`~/.config/agent-pipelines/openclaw-device.pem`, mode 0600): a gateway reached over loopback
pairs it by itself, any other gateway asks its operator once (`openclaw devices approve`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from agent_pipelines.importers.gateways import GatewayError, GatewaySpec

IDENTITY_ENV = "AGENT_PIPELINES_OPENCLAW_IDENTITY"
PROTOCOL = 4
CLIENT_ID = "gateway-client"  # one of OpenClaw's fixed client ids (GATEWAY_CLIENT_IDS)
CLIENT_MODE = "backend"
SCOPES = ("operator.admin",)
CONNECT_TIMEOUT_S = 15.0
CALL_TIMEOUT_S = 60.0
LIST_PAGE = 200
T = TypeVar("T")


def identity_path() -> Path:
    configured = os.environ.get(IDENTITY_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".config" / "agent-pipelines" / "openclaw-device.pem"


def _load_identity() -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = identity_path()
    if path.is_file():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise GatewayError(f"{path} does not hold an Ed25519 key (delete it to make a new one)")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".openclaw-device.", dir=path.parent)
    try:
        os.write(fd, pem)
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # never replaces a key another process has just written
    except FileExistsError:
        os.unlink(tmp)
        return _load_identity()
    os.unlink(tmp)
    return key


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ws_url(base_url: str) -> str:
    if base_url.startswith("https://"):
        return "wss://" + base_url[len("https://"):]
    return "ws://" + base_url.removeprefix("http://")


class RpcError(GatewayError):
    def __init__(self, message: str, code: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.code, self.details = code, details


class Connection:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, gateway: GatewaySpec) -> None:
        self.ws, self.gateway = ws, gateway

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        request_id = str(uuid.uuid4())
        await self.ws.send_json({"type": "req", "id": request_id, "method": method, "params": params})
        while True:
            message = await self.ws.receive(timeout=CALL_TIMEOUT_S)
            if message.type != aiohttp.WSMsgType.TEXT:
                raise GatewayError(f"gateway {self.gateway.name!r}: connection closed during {method} ({message.type.name})")
            frame = message.json()
            if frame.get("type") != "res" or frame.get("id") != request_id:
                continue  # events
            if frame.get("ok"):
                return frame.get("payload")
            error = frame.get("error") or {}
            details = error.get("details") or {}
            code = details.get("code") if isinstance(details, dict) else None
            raise RpcError(f"gateway {self.gateway.name!r}: {method}: {error.get('message') or error}", code or error.get("code"), details)


async def _connect(session: aiohttp.ClientSession, gateway: GatewaySpec, token: str | None) -> Connection:
    from cryptography.hazmat.primitives import serialization

    try:
        ws = await session.ws_connect(ws_url(gateway.base_url or ""), timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                                      max_msg_size=64 * 1024 * 1024, heartbeat=None)
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
        raise GatewayError(f"gateway {gateway.name!r}: cannot open {ws_url(gateway.base_url or '')}: {exc}") from None
    connection = Connection(ws, gateway)
    challenge = await ws.receive_json(timeout=CONNECT_TIMEOUT_S)
    payload = challenge.get("payload") or {}
    if challenge.get("event") != "connect.challenge" or "nonce" not in payload:
        raise GatewayError(f"gateway {gateway.name!r}: expected connect.challenge, got {str(challenge)[:200]}")
    key = _load_identity()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    device_id = hashlib.sha256(raw).hexdigest()
    signed_at, nonce, platform = int(payload.get("ts") or 0), str(payload["nonce"]), sys.platform
    signed = "|".join(["v3", device_id, CLIENT_ID, CLIENT_MODE, "operator", ",".join(SCOPES), str(signed_at),
                       token or "", nonce, platform.lower(), ""])
    params = {
        "minProtocol": PROTOCOL, "maxProtocol": PROTOCOL,
        "client": {"id": CLIENT_ID, "displayName": "agent-pipelines import", "version": "0.1.0",
                   "platform": platform, "mode": CLIENT_MODE},
        "caps": [], "role": "operator", "scopes": list(SCOPES),
        "auth": {"token": token} if token else {},
        "device": {"id": device_id, "publicKey": _b64url(raw), "signature": _b64url(key.sign(signed.encode())),
                   "signedAt": signed_at, "nonce": nonce},
    }
    try:
        hello = await connection.call("connect", params)
    except RpcError as exc:
        if exc.code and "PAIRING" in str(exc.code).upper():
            raise GatewayError(
                f"gateway {gateway.name!r} asks to pair this machine's key ({identity_path()}, device {device_id[:12]}…): "
                "approve it on the gateway with `openclaw devices approve --latest`, then run this again"
            ) from None
        raise
    granted = set(((hello or {}).get("auth") or {}).get("scopes") or [])
    if "operator.admin" not in granted:
        raise GatewayError(f"gateway {gateway.name!r} granted scopes {sorted(granted)}: changing automations needs operator.admin")
    return connection


def run(gateway: GatewaySpec, work: Callable[[Connection], Awaitable[T]]) -> T:
    """Open one connection to the gateway, run `work` on it, close it."""
    token = gateway.token()

    async def main() -> T:
        async with aiohttp.ClientSession(trust_env=False) as session:
            connection = await _connect(session, gateway, token)
            try:
                return await work(connection)
            finally:
                await connection.ws.close()

    try:
        return asyncio.run(main())
    except asyncio.TimeoutError:
        raise GatewayError(f"gateway {gateway.name!r}: no answer within {CALL_TIMEOUT_S:g}s") from None
    except aiohttp.ClientError as exc:
        raise GatewayError(f"gateway {gateway.name!r}: {exc}") from None


async def list_jobs(connection: Connection) -> list[dict[str, Any]]:
    """Every job, disabled ones too, paged; restarted if the inventory changes while paging."""
    for _attempt in range(5):
        jobs: list[dict[str, Any]] = []
        offset, revision = 0, None
        while True:
            page = await connection.call("cron.list", {"includeDisabled": True, "limit": LIST_PAGE, "offset": offset})
            if revision is not None and page.get("snapshotRevision") != revision:
                break
            revision = page.get("snapshotRevision")
            jobs += [j for j in page.get("jobs") or [] if isinstance(j, dict)]
            if not page.get("hasMore") or page.get("nextOffset") is None:
                return jobs
            offset = int(page["nextOffset"])
    raise GatewayError(f"gateway {connection.gateway.name!r}: its jobs kept changing while they were read")
