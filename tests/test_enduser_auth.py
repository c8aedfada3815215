"""End-user auth on the http trigger: JWTs verified with the app's own keys."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.conftest import Api

SECRET = "an-hs256-secret-of-at-least-32-characters!"
WHOAMI = """export default (req, ctx) =>
  Response.json({ user: ctx.user, auth: req.headers.get('authorization') })"""
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def token(
    key: Any = SECRET,
    algorithm: str = "HS256",
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    now = int(time.time())
    body = {"sub": "user-1", "aud": "authenticated", "exp": now + 300, "iat": now, **claims}
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm=algorithm, headers=headers)


def pem(key: Any) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


async def configure(api: Api, **auth: Any) -> dict[str, Any]:
    response = await api.client.put(
        f"/v1/{api.app_id}/settings", json={"auth": auth}, headers=api.headers
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def deploy(api: Api, name: str, mode: str) -> None:
    await api.deploy(name, WHOAMI, expect=201, trigger={"type": "http", "config": {"auth": mode}})


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


async def test_settings_never_return_the_secret(api: Api) -> None:
    view = await configure(api, jwtSecret=SECRET, audience="authenticated")
    assert SECRET not in json.dumps(view)
    assert view["auth"]["jwtSecretSet"] is True and view["auth"]["audience"] == "authenticated"
    read = await api.client.get("/v1/demo/settings", headers=api.headers)
    assert SECRET not in read.text and read.json()["auth"]["jwtSecretSet"] is True
    short = await api.client.put(
        "/v1/demo/settings", json={"auth": {"jwtSecret": "short"}}, headers=api.headers
    )
    assert short.status_code == 422
    bad_key = await api.client.put(
        "/v1/demo/settings", json={"auth": {"publicKey": "nope"}}, headers=api.headers
    )
    assert bad_key.status_code == 422 and "publicKey" in bad_key.json()["error"]


async def test_required_mode_with_hs256(api: Api) -> None:
    await configure(api, jwtSecret=SECRET, audience="authenticated")
    await deploy(api, "private", "required")
    good = await api.call("private", headers=bearer(token(role="admin")))
    assert good.status_code == 200, good.text
    assert good.json()["user"]["sub"] == "user-1" and good.json()["user"]["role"] == "admin"
    assert good.json()["auth"].startswith("Bearer ")

    refused = {
        "missing": {},
        "garbage": bearer("not-a-jwt"),
        "expired": bearer(token(exp=int(time.time()) - 60)),
        "not yet valid": bearer(token(nbf=int(time.time()) + 600)),
        "wrong audience": bearer(token(aud="someone-else")),
        "no exp": bearer(token(exp=None)),
        "wrong secret": bearer(token(key="another-secret-that-is-long-enough-0000")),
        "alg none": bearer(
            jwt.encode(
                {"sub": "x", "aud": "authenticated", "exp": int(time.time()) + 60},
                None,
                algorithm="none",
            )
        ),
        "wrong alg": bearer(token(key=RSA_KEY, algorithm="RS256")),
    }
    for case, headers in refused.items():
        response = await api.call("private", headers=headers)
        assert response.status_code == 401, (case, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]
    records = await api.logs("private")
    assert len(records) == 1  # refused calls never reached the function


async def test_optional_mode_treats_bad_tokens_as_anonymous(api: Api) -> None:
    await configure(api, jwtSecret=SECRET, audience="authenticated")
    await deploy(api, "maybe", "optional")
    assert (await api.call("maybe", headers=bearer(token()))).json()["user"]["sub"] == "user-1"
    for headers in ({}, bearer(token(exp=int(time.time()) - 60)), bearer("junk")):
        response = await api.call("maybe", headers=headers)
        assert response.status_code == 200 and response.json()["user"] is None


async def test_none_mode_forwards_the_token_untouched(api: Api) -> None:
    await deploy(api, "open", "none")
    seen = (await api.call("open", headers=bearer("anything-goes"))).json()
    assert seen == {"user": None, "auth": "Bearer anything-goes"}


@pytest.mark.parametrize("kind", ["rs256-jwks", "es256-pem"])
async def test_public_key_modes(api: Api, kind: str) -> None:
    if kind == "rs256-jwks":
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key()))
        await configure(
            api,
            jwks={"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]},
            audience="authenticated",
        )
        good = token(RSA_KEY, "RS256", headers={"kid": "k1"})
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        forged = token(other, "RS256", headers={"kid": "k1"})
        confused = token(SECRET, "HS256")
    else:
        await configure(api, publicKey=pem(EC_KEY), audience="authenticated")
        good = token(EC_KEY, "ES256")
        forged = token(ec.generate_private_key(ec.SECP256R1()), "ES256")
        confused = token(SECRET, "HS256")
    await deploy(api, "pk", "required")
    response = await api.call("pk", headers=bearer(good))
    assert response.status_code == 200, response.text
    assert response.json()["user"]["sub"] == "user-1"
    for bad in (forged, confused):
        assert (await api.call("pk", headers=bearer(bad))).status_code == 401


async def test_required_mode_without_configured_keys_refuses(api: Api) -> None:
    await deploy(api, "locked", "required")
    response = await api.call("locked", headers=bearer(token()))
    assert response.status_code == 401
    assert "not configured" in response.json()["error"]


async def test_app_key_cannot_touch_other_apps_settings(api: Api, platform: Any) -> None:
    _, secret = await platform.keys.create_app_key("demo")
    response = await api.client.put("/v1/other/settings", json={"auth": {}}, headers=bearer(secret))
    assert response.status_code == 403
