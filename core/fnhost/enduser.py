"""End-user tokens: JWTs verified with an app's own keys (HS256 secret, or RS256/ES256
public keys / JWKS), for http triggers with auth "optional" or "required" and for
WebSocket connections. The claims of a verified token reach the function as ctx.user.

An app's auth settings live in `App.settings["auth"]`; the HS256 secret is stored
encrypted like env vars and never returned.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import jwt
import msgspec

from fnhost.errors import InvalidField, Unauthenticated

if TYPE_CHECKING:
    from fnhost.platform import Platform

HMAC_ALGORITHMS = ["HS256"]
PUBLIC_KEY_ALGORITHMS = ["RS256", "ES256"]
LEEWAY_SECONDS = 5
CACHE_SECONDS = 5.0


class AuthSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, rename="camel"):
    """`PUT /v1/{app_id}/settings` `auth` section, as sent by the operator."""

    jwt_secret: str | None = None
    public_key: str | None = None  # PEM
    jwks: dict[str, Any] | None = None  # {"keys": [...]}
    audience: str | None = None
    issuer: str | None = None


class Verifier:
    """Keys of one app, ready to verify tokens."""

    def __init__(
        self,
        secret: str | None,
        public_keys: dict[str | None, Any],
        audience: str | None,
        issuer: str | None,
    ) -> None:
        self.secret = secret
        self.public_keys = public_keys  # kid (or None) -> key object
        self.audience = audience
        self.issuer = issuer

    @property
    def configured(self) -> bool:
        return bool(self.secret or self.public_keys)

    def verify(self, token: str) -> dict[str, Any]:
        if not self.configured:
            raise Unauthenticated("end-user tokens are not configured for this app")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("malformed token") from None
        algorithm = header.get("alg")
        if algorithm in HMAC_ALGORITHMS and self.secret:
            key: Any = self.secret
        elif algorithm in PUBLIC_KEY_ALGORITHMS and self.public_keys:
            key = self.public_keys.get(header.get("kid")) or (
                next(iter(self.public_keys.values())) if len(self.public_keys) == 1 else None
            )
            if key is None:
                raise Unauthenticated("token signed with an unknown key")
        else:
            raise Unauthenticated(f"token algorithm {algorithm!r} is not accepted")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("token audience not accepted") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("token issuer not accepted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"token has no {exc.claim!r} claim") from None
        except jwt.PyJWTError:
            raise Unauthenticated("invalid token") from None
        return claims


class EndUserAuth:
    """Verifies end-user tokens per app; settings cached briefly, refreshed on change."""

    leeway_seconds = LEEWAY_SECONDS  # clock skew allowed on exp and nbf

    def __init__(self, platform: Platform) -> None:
        self._platform = platform
        self._cache: dict[str, tuple[float, Verifier]] = {}

    def forget(self, app_id: str) -> None:
        self._cache.pop(app_id, None)

    async def verify(self, app_id: str, token: str) -> dict[str, Any]:
        """The claims of a valid token, or Unauthenticated saying why not."""
        return (await self._verifier(app_id)).verify(token)

    async def user_of(
        self, app_id: str, authorization: str | None, mode: str
    ) -> dict[str, Any] | None:
        """ctx.user of an http call with an `Authorization` header (see `user_for_token`)."""
        return await self.user_for_token(
            app_id,
            bearer_token(authorization),
            mode,
            missing="this function requires an end-user token (Bearer)",
        )

    async def user_for_token(
        self, app_id: str, token: str | None, mode: str, missing: str
    ) -> dict[str, Any] | None:
        """ctx.user for an auth mode: "none" -> None; "optional" -> claims or None;
        "required" -> claims, or Unauthenticated (with `missing` when there is no token)."""
        if mode == "none":
            return None
        if token is None:
            if mode == "required":
                raise Unauthenticated(missing)
            return None
        try:
            return await self.verify(app_id, token)
        except Unauthenticated:
            if mode == "required":
                raise
            return None

    async def _verifier(self, app_id: str) -> Verifier:
        cached = self._cache.get(app_id)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        app = await self._platform.store.get_app(app_id)
        stored = (app.settings.get("auth") if app else None) or {}
        verifier = self.build(stored)
        self._cache[app_id] = (now + CACHE_SECONDS, verifier)
        return verifier

    def build(self, stored: dict[str, Any]) -> Verifier:
        secret = stored.get("jwt_secret")
        return Verifier(
            secret=self._platform.cipher.decrypt(secret) if secret else None,
            public_keys=public_keys(stored.get("public_key"), stored.get("jwks")),
            audience=stored.get("audience"),
            issuer=stored.get("issuer"),
        )

    def to_stored(self, settings: AuthSettings, current: dict[str, Any]) -> dict[str, Any]:
        """Validate new settings (keys must parse) and encrypt the secret for the store.

        An omitted `jwtSecret` keeps the current one; an empty string removes it.
        """
        public_keys(settings.public_key, settings.jwks)  # raises InvalidField
        stored: dict[str, Any] = {
            "public_key": settings.public_key,
            "jwks": settings.jwks,
            "audience": settings.audience,
            "issuer": settings.issuer,
            "jwt_secret": current.get("jwt_secret"),
        }
        if settings.jwt_secret is not None:
            if settings.jwt_secret and len(settings.jwt_secret) < 32:
                raise InvalidField(
                    "auth.jwtSecret: use at least 32 characters", {"field": "auth.jwtSecret"}
                )
            stored["jwt_secret"] = (
                self._platform.cipher.encrypt(settings.jwt_secret) if settings.jwt_secret else None
            )
        return {k: v for k, v in stored.items() if v is not None}


def public_view(stored: dict[str, Any]) -> dict[str, Any]:
    """Auth settings as returned by the API: the secret is only said to be set."""
    view = {k: v for k, v in stored.items() if k != "jwt_secret"}
    view["jwtSecretSet"] = bool(stored.get("jwt_secret"))
    if "public_key" in view:
        view["publicKey"] = view.pop("public_key")
    return view


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def public_keys(pem: str | None, jwks: dict[str, Any] | None) -> dict[str | None, Any]:
    keys: dict[str | None, Any] = {}
    if pem:
        try:
            keys[None] = jwt.algorithms.get_default_algorithms()["RS256"].prepare_key(pem)
        except Exception:
            try:
                keys[None] = jwt.algorithms.get_default_algorithms()["ES256"].prepare_key(pem)
            except Exception:
                raise InvalidField(
                    "auth.publicKey: not an RSA or EC public key in PEM",
                    {"field": "auth.publicKey"},
                ) from None
    if jwks:
        try:
            for jwk in jwt.PyJWKSet.from_json(json.dumps(jwks)).keys:
                keys[jwk.key_id] = jwk.key
        except jwt.PyJWTError as exc:
            raise InvalidField(f"auth.jwks: {exc}", {"field": "auth.jwks"}) from None
    return keys
