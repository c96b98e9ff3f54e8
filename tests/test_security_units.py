"""The pure parts of security: tokens, grants, token buckets, the connection counter, log redaction."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import urllib.parse
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from jobcast.server.auth import OPEN, Auth, TokenSigner, bearer_token, parse_rights, parse_ttl, subprotocol_token
from jobcast.server.errors import (
    AuthRequired,
    ConfigError,
    Forbidden,
    InvalidToken,
    RateLimited,
    TokenExpired,
    TooManyConnections,
)
from jobcast.server.limits import ConnectionCounter, RateLimiter, TokenBucket
from jobcast.server.logs import Redactor, ThrottleFloods
from jobcast.server.settings import Settings

SECRET = "unit-test-secret-0123456789-abcdef"
OTHER_SECRET = "another-secret-0123456789-abcdefgh"


def claims_of(token: str) -> dict[str, object]:
    claims: dict[str, object] = jwt.decode(token, options={"verify_signature": False})
    return claims


def unsigned(claims: dict[str, object]) -> str:
    """A token with ``alg: none`` and no signature, as an attacker writes it by hand."""
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{body}."


NOW = 1_800_000_000.0


def signer() -> TokenSigner:
    return TokenSigner(SECRET)


def test_a_token_round_trips_its_projects_rights_and_expiry() -> None:
    """What mint() signs, verify() returns: projects, rights, expiry, and a digest (not the token) as its key."""
    token = signer().mint(["globex", "acme"], ["run", "read"], 90, NOW)
    grant = signer().verify(token, NOW + 89)
    assert (grant.projects, grant.rights, grant.expires_at) == ({"acme", "globex"}, {"read", "run"}, NOW + 90)
    assert grant.key and grant.key not in token
    assert signer().verify(signer().mint(["*"], ["read"], 60, NOW), NOW).projects is None


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # the signature
        lambda t: t.split(".")[0] + "." + t.split(".")[1],  # no signature
        lambda t: t + "." + t,  # too many parts
        lambda t: t.split(".")[0] + "." + "A" * 9000 + "." + t.split(".")[2],  # too long
        lambda t: TokenSigner(OTHER_SECRET).mint(["*"], ["read", "run"], 60, NOW),
        lambda t: unsigned(claims_of(t)),  # alg: none
        lambda t: jwt.encode(claims_of(t), SECRET * 2, algorithm="HS512"),  # an algorithm the server did not choose
        lambda t: jwt.encode({**claims_of(t), "jobcast": {"projects": "*"}}, SECRET),  # no rights
        lambda t: jwt.encode({k: v for k, v in claims_of(t).items() if k != "exp"}, SECRET),  # no expiry
        lambda t: jwt.encode({**claims_of(t), "nbf": NOW + 30}, SECRET),  # not valid yet
    ],
)
def test_any_change_to_a_token_makes_it_invalid(mangle: object) -> None:
    """An altered, re-signed, truncated or oversized token is invalid_token, never a grant."""
    token = signer().mint(["acme"], ["read"], 60, NOW)
    with pytest.raises(InvalidToken):
        signer().verify(mangle(token), NOW)  # type: ignore[operator]


def test_a_backend_mints_a_token_with_pyjwt_alone() -> None:
    """The documented claims, signed HS256 with the server's secret by any JWT library, are a token."""
    claims = {"sub": "alice@example.com", "iat": NOW, "exp": NOW + 600,
              "jobcast": {"projects": ["acme"], "rights": ["read", "run"]}}  # fmt: skip
    grant = Auth.from_secret(SECRET).authenticate(f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}", [], NOW)
    assert (grant.projects, grant.rights, grant.subject) == ({"acme"}, {"read", "run"}, "alice@example.com")
    assert claims_of(signer().mint(["acme"], ["read"], 60, NOW, subject="bob")) == {
        "sub": "bob", "iat": NOW, "exp": NOW + 60, "jobcast": {"projects": ["acme"], "rights": ["read"]},
    }  # fmt: skip


def public_key_auth(tmp_path: Path, private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, **settings: str) -> Auth:
    pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "public.pem").write_bytes(pem)
    return Auth.from_settings(Settings(jwt_public_key=str(tmp_path / "public.pem"), **settings))


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_an_identity_services_tokens_are_verified_with_its_public_key_only(tmp_path: Path, algorithm: str) -> None:
    """RS256 / ES256 tokens verify with --jwt-public-key; the public key used as an HMAC secret is a forgery."""
    private = rsa.generate_private_key(65537, 2048) if algorithm == "RS256" else ec.generate_private_key(ec.SECP256R1())
    auth = public_key_auth(tmp_path, private)
    claims = {"sub": "carol", "exp": NOW + 60, "jobcast": {"projects": "*", "rights": ["read"]}}
    assert auth.authenticate(f"Bearer {jwt.encode(claims, private, algorithm=algorithm)}", [], NOW).projects is None
    public_pem = (tmp_path / "public.pem").read_bytes()
    confused = jwt.encode(claims, "placeholder-secret-0123456789-abcdef", algorithm="HS256").rsplit(".", 1)[0]
    mac = hmac.new(public_pem, confused.encode(), hashlib.sha256).digest()
    confused += "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    for forged in (confused, unsigned(claims), jwt.encode(claims, SECRET, algorithm="HS256")):
        with pytest.raises(InvalidToken):
            auth.authenticate(f"Bearer {forged}", [], NOW)


def test_audience_and_issuer_are_checked_when_set(tmp_path: Path) -> None:
    """With --jwt-audience/--jwt-issuer a token must carry both, exactly; jobcast token mints them."""
    private = ec.generate_private_key(ec.SECP256R1())
    auth = public_key_auth(tmp_path, private, jwt_audience="jobcast", jwt_issuer="https://id.example.com")
    base = {"exp": NOW + 60, "jobcast": {"projects": ["acme"], "rights": ["read"]}}
    good = {**base, "aud": "jobcast", "iss": "https://id.example.com"}
    assert auth.authenticate(f"Bearer {jwt.encode(good, private, algorithm='ES256')}", [], NOW).covers("acme")
    for claims in (base, {**good, "aud": "other"}, {**good, "iss": "https://evil.example.com"}):
        with pytest.raises(InvalidToken):
            auth.authenticate(f"Bearer {jwt.encode(claims, private, algorithm='ES256')}", [], NOW)


def test_a_token_expires_at_its_expiry_and_only_a_valid_one_says_so() -> None:
    """At its expiry a token is token_expired; a forged expired one is invalid_token, not expired."""
    token = signer().mint(["acme"], ["read"], 60, NOW)
    with pytest.raises(TokenExpired):
        signer().verify(token, NOW + 60)
    forged = TokenSigner(OTHER_SECRET).mint(["acme"], ["read"], 60, NOW - 3600)
    with pytest.raises(InvalidToken):
        signer().verify(forged, NOW)


def test_a_grant_answers_the_same_for_every_project_it_does_not_cover() -> None:
    """Forbidden's message never names the project, so existing and unknown ids look alike."""
    grant = signer().verify(signer().mint(["acme"], ["read"], 60, NOW), NOW)
    grant.require("read", "acme")
    messages = set()
    for project in ("globex", "initech"):
        with pytest.raises(Forbidden) as refused:
            grant.require("read", project)
        messages.add(refused.value.message)
    assert messages == {"this token does not cover that project"}
    with pytest.raises(Forbidden, match="'run' right"):
        grant.require("run", "acme")


def test_auth_reads_the_header_then_the_subprotocol_and_is_open_without_a_secret() -> None:
    """A secret needs a token (header, else subprotocol); no secret grants everything; bad setups stop start-up."""
    auth = Auth.from_secret(SECRET)
    token = signer().mint(["acme"], ["read"], 60, NOW)
    assert auth.authenticate(f"Bearer {token}", [], NOW).covers("acme")
    assert auth.authenticate(None, ["jobcast", f"jobcast.bearer.{token}"], NOW).covers("acme")
    with pytest.raises(AuthRequired):
        auth.authenticate("Basic dXNlcjpwYXNz", ["jobcast"], NOW)
    assert Auth.from_secret(None).authenticate(None, [], NOW) is OPEN
    with pytest.raises(ConfigError, match="require-auth"):
        Auth.from_secret(None, require=True)
    with pytest.raises(ConfigError, match="32 characters"):
        Auth.from_secret("short")
    assert "unit-test" not in repr(signer())


def test_bearer_and_subprotocol_parsing() -> None:
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Bearer") is None and bearer_token("Token abc") is None and bearer_token(None) is None
    assert subprotocol_token(["jobcast", "jobcast.bearer.abc"]) == "abc"
    assert subprotocol_token(["jobcast", "jobcast.bearer."]) is None


def test_ttl_and_rights_parsing() -> None:
    assert [parse_ttl(t) for t in ("90", "90s", "30m", "1h", "7d", "1.5h")] == [90, 90, 1800, 3600, 604800, 5400]
    for bad in ("0", "-1h", "1w", "", "400d", "nan", "١h", "²"):
        with pytest.raises(ValueError):
            parse_ttl(bad)
    assert parse_rights("run, read") == ("read", "run")
    assert parse_rights("admin") == ("admin",)
    with pytest.raises(ValueError):
        parse_rights("read,root")


def test_a_token_bucket_allows_a_burst_then_the_rate() -> None:
    """Three at once, then one every 20 s: the wait is what the bucket still lacks."""
    limiter = RateLimiter(3, clock=lambda: now)
    now = 0.0
    for _ in range(3):
        limiter.check("t")
    with pytest.raises(RateLimited) as limited:
        limiter.check("t")
    assert limited.value.retry_after == 20
    limiter.check("other")  # another key, another bucket
    now = 20.0
    limiter.check("t")
    bucket = TokenBucket(2, 1, 0.0)
    assert [bucket.take(0.0), bucket.take(0.0), bucket.take(0.5)] == [0.0, 0.0, 0.5]


def test_the_connection_counter_refuses_past_its_limit_per_address() -> None:
    counter = ConnectionCounter(2)
    with counter.hold("a"), counter.hold("a"):
        with pytest.raises(TooManyConnections):
            counter.acquire("a")
        with counter.hold("b"):
            assert counter.count("b") == 1
    assert counter.count("a") == 0


def test_the_redactor_blanks_tokens_headers_credentials_and_the_secret() -> None:
    """Access-log arguments stay a tuple; other records are rewritten whole."""
    token = signer().mint(["acme"], ["read"], 60, NOW)
    redactor = Redactor(SECRET)
    access = logging.LogRecord(
        "uvicorn.access", 20, "", 0, '%s - "%s %s" %d', ("c", "GET", f"/x?token={token}", 200), None
    )
    redactor.filter(access)
    assert access.args == ("c", "GET", "/x?token=[redacted]", 200)
    for msg, args in [
        ("< %s: %s", ("authorization", "Bearer some-opaque-value")),
        ("< %s: %s", ("sec-websocket-protocol", "jobcast, jobcast.bearer.opaque-value")),
        ("secret is %s", (SECRET,)),
        ("%s", ("/x?access_token=opaque-value&after=3",)),
        ("%s", ("/x?foo=eyJ0%2Eopaque-value%2Eopaque-value",)),
        ("%s", ("/x?foo=eyJ0%252Eopaque-value%252Eopaque-value",)),  # encoded twice
        ("%s", ("/x?foo=" + "".join(f"%{byte:02X}" for byte in b"eyJ0.opaque-value.opaque-value"),)),
        ("%s", ("/x?s=" + SECRET.replace("-", "%2D").replace("a", "%61"),)),
    ]:
        record = logging.LogRecord("uvicorn.error", 10, "", 0, msg, args, None)
        redactor.filter(record)
        text = record.getMessage()
        assert "opaque-value" not in text and SECRET not in text and "[redacted]" in text, text
        assert "opaque-value" not in urllib.parse.unquote(urllib.parse.unquote(text)), text


def test_lines_a_client_can_provoke_are_throttled_and_counted() -> None:
    """Five a minute pass; the first after the minute says how many were left out; other lines always pass."""
    clock = [0.0]
    throttle = ThrottleFloods(per_minute=5, clock=lambda: clock[0])

    def passes(msg: str) -> bool:
        return throttle.filter(logging.LogRecord("uvicorn.error", 30, "", 0, msg, None, None))

    assert [passes("Invalid HTTP request received.") for _ in range(8)] == [True] * 5 + [False] * 3
    assert all(passes("something else") for _ in range(20))
    clock[0] = 60.0
    record = logging.LogRecord("uvicorn.error", 30, "", 0, "Invalid HTTP request received.", None, None)
    assert throttle.filter(record) and record.getMessage().endswith("(and 3 more like it not logged)")
