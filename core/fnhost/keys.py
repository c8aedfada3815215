"""Management keys: the admin key and per-app API keys. Only SHA-256 hashes are stored;
keys are 256-bit random tokens, so a plain hash is enough (no password stretching)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from fnhost.crypto import write_secret_file
from fnhost.errors import Forbidden, Unauthenticated
from fnhost.models import ApiKey, App
from fnhost.names import check_app_id

if TYPE_CHECKING:
    from fnhost.platform import Platform

ADMIN_KEY_FILE = "admin.key"
KEY_PREFIX = "fnh_"


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    """Who is calling a management route."""

    role: str  # "admin" or "app"
    app_id: str | None
    key_id: str

    def require_app(self, app_id: str) -> None:
        """Raise Forbidden unless this principal may manage `app_id`."""
        if self.role != "admin" and self.app_id != app_id:
            raise Forbidden(f"this API key does not grant access to app {app_id!r}")


class KeyRing:
    def __init__(self, platform: Platform) -> None:
        self._platform = platform
        configured = platform.config.server.admin_key
        self._configured_admin_hash = hash_key(configured) if configured else None

    async def ensure_admin_key(self) -> str | None:
        """Make sure an admin key exists; return the secret if it was generated just now.

        A configured `server.admin_key` wins. Otherwise the key in
        `<data_dir>/admin.key` is used, or a new one generated there (mode 0600).
        """
        if self._configured_admin_hash:
            return None
        store = self._platform.store
        path = self._platform.config.data_path / ADMIN_KEY_FILE
        admins = [k for k in await store.list_api_keys() if k.role == "admin" and not k.revoked_at]
        if path.exists():
            secret = path.read_text().strip()
            if not any(hmac.compare_digest(k.key_hash, hash_key(secret)) for k in admins):
                await store.add_api_key(_key("admin", None, secret, "admin"))
            return None
        if admins:
            return None  # another process of this deployment generated it
        secret = new_secret()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_secret_file(path, secret)
        await store.add_api_key(_key("admin", None, secret, "admin"))
        return secret

    async def create_app_key(self, app_id: str, name: str = "") -> tuple[ApiKey, str]:
        """Create an API key for an app (creating the app if needed); return it and its secret."""
        check_app_id(app_id)
        store = self._platform.store
        if await store.get_app(app_id) is None:
            await store.save_app(App(id=app_id, created_at=datetime.now(UTC)))
        secret = new_secret()
        key = _key("app", app_id, secret, name)
        await store.add_api_key(key)
        return key, secret

    async def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an `Authorization: Bearer <key>` header, or Unauthenticated."""
        if not authorization:
            raise Unauthenticated("missing Authorization: Bearer <key>")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("expected Authorization: Bearer <key>")
        token_hash = hash_key(token)
        if self._configured_admin_hash and hmac.compare_digest(
            token_hash, self._configured_admin_hash
        ):
            return Principal("admin", None, "configured-admin")
        key = await self._platform.store.find_api_key(token_hash)
        # The lookup is by hash; compare again in constant time so a store that
        # matches loosely (collation, prefix) cannot let a wrong key through.
        if (
            key is None
            or key.revoked_at is not None
            or not hmac.compare_digest(key.key_hash, token_hash)
        ):
            raise Unauthenticated("invalid API key")
        return Principal(key.role, key.app_id, key.id)


def _key(role: str, app_id: str | None, secret: str, name: str) -> ApiKey:
    return ApiKey(
        id=uuid.uuid4().hex[:16],
        role=role,  # type: ignore[arg-type]
        app_id=app_id,
        key_hash=hash_key(secret),
        created_at=datetime.now(UTC),
        name=name,
    )
