"""Access tokens: standard JWTs, verified with the server's keys. Pure: no I/O, the clock is passed in.

A token is a JWT (RFC 7519) any backend can mint with its own JWT library::

    {"sub": "alice@example.com", "iat": 1767225600, "exp": 1767229200,
     "jobcast": {"projects": ["acme"], "rights": ["read", "run"]}}

``jobcast`` is the one claim of jobcast's own: the projects the token covers (a list, or
``"*"`` for every project) and its rights. ``exp`` is required; ``sub`` names the user (jobs
it starts record it as ``started_by``). Signed HS256 with ``--secret``, or RS256 / ES256 by
an identity service whose public key jobcast is given (``--jwt-public-key``): then jobcast
only verifies. ``--jwt-audience`` and ``--jwt-issuer`` are checked when set. Only the
algorithms of the configured keys are accepted, so ``alg: none`` and a token signed with
the public key as an HMAC secret are refused like any forgery.

Rights: ``read`` (state, history, every push transport) and ``run`` (start and cancel).

Without a key, :class:`Auth` is open: every request gets :data:`OPEN`, which may do
anything. That is how jobcast ran before tokens, and ``jobcast serve`` warns about it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .errors import AuthRequired, ConfigError, Forbidden, InvalidToken, TokenExpired

if TYPE_CHECKING:
    from .settings import Settings
from .validation import PROJECT_ID

#: read: see a project; run: start and cancel its jobs; admin: the operator's view (/metrics)
RIGHTS = ("read", "run", "admin")
#: every project, in a token's project list
ALL_PROJECTS = "*"
#: the WebSocket subprotocol the server answers with; browsers offer it beside their token
SUBPROTOCOL = "jobcast"
#: a browser offers its token as the subprotocol ``jobcast.bearer.<token>``
BEARER_SUBPROTOCOL = "jobcast.bearer."
MIN_SECRET_LENGTH = 32  # RFC 7518 §3.2: an HS256 key has at least 256 bits
MAX_TTL_SECONDS = 366 * 24 * 3600.0

#: the claim that holds a token's projects and rights
CLAIM = "jobcast"
HMAC_ALGORITHM = "HS256"

_MAX_TOKEN_LENGTH = 8192
_TTL = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd]?)")  # ASCII digits: \d would take "١"
_SUBJECT = re.compile(r"[!-~]{1,128}")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclasses.dataclass(frozen=True)
class Grant:
    """What one request may do: the projects (None: all), the rights and the expiry (None: never)."""

    projects: frozenset[str] | None
    rights: frozenset[str]
    expires_at: float | None
    #: the rate limiter's name for the token: a digest, never the token itself ("" when open)
    key: str = ""
    #: who the token was minted for (``jobcast token --subject``): jobs record it as ``started_by``
    subject: str | None = None

    def covers(self, project_id: str) -> bool:
        return self.projects is None or project_id in self.projects

    def require(self, right: str, project_id: str | None = None) -> None:
        """Raise Forbidden unless this grant has ``right`` on ``project_id``; the same for any project."""
        if right not in self.rights:
            raise Forbidden(f"this token lacks the {right!r} right")
        if project_id is not None and not self.covers(project_id):
            raise Forbidden("this token does not cover that project")

    def seconds_left(self, now: float) -> float | None:
        return None if self.expires_at is None else max(0.0, self.expires_at - now)


#: the grant of every request when jobcast runs open (no secret)
OPEN = Grant(projects=None, rights=frozenset(RIGHTS), expires_at=None)


@dataclasses.dataclass(frozen=True)
class Claims:
    """What the registered claims ``aud`` and ``iss`` must be, when the server sets them."""

    audience: str | None = None
    issuer: str | None = None


class TokenVerifier:
    """Verifies tokens with the server's keys: an HMAC secret, an identity service's public key, or both."""

    def __init__(self, keys: Mapping[str, Any], expected: Claims = Claims()) -> None:
        if not keys:
            raise ConfigError("a token verifier needs a key")
        self._keys = dict(keys)  # algorithm -> key: a token naming any other algorithm is refused
        self.expected = expected

    def __repr__(self) -> str:
        return f"TokenVerifier(algorithms={sorted(self._keys)})"

    def verify(self, token: str, now: float) -> Grant:
        """The token's grant; InvalidToken unless its signature and claims hold, TokenExpired past ``exp``."""
        if len(token) > _MAX_TOKEN_LENGTH:
            raise InvalidToken()
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
            if not isinstance(algorithm, str) or algorithm not in self._keys:
                raise InvalidToken()
            key = self._keys[algorithm]
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.expected.audience,
                issuer=self.expected.issuer,
                # the times are checked below against the caller's clock
                options={"require": ["exp"], "verify_exp": False, "verify_iat": False, "verify_nbf": False},
            )
        except jwt.PyJWTError:
            raise InvalidToken() from None
        grant = _grant(claims, key=hashlib.sha256(token.encode()).hexdigest()[:32])
        if _number(claims.get("nbf", now)) > now:
            raise InvalidToken()
        if grant.expires_at is not None and now >= grant.expires_at:
            raise TokenExpired()
        return grant


class TokenSigner(TokenVerifier):
    """Mints (and verifies) HS256 tokens with the server's secret: what ``jobcast token`` does."""

    def __init__(self, secret: str, expected: Claims = Claims()) -> None:
        self._secret = checked_secret(secret)
        super().__init__({HMAC_ALGORITHM: self._secret}, expected)

    def __repr__(self) -> str:
        return "TokenSigner(<secret>)"

    def mint(
        self, projects: Sequence[str], rights: Iterable[str], ttl: float, now: float, subject: str | None = None
    ) -> str:
        """A token for ``projects`` (``["*"]`` for all) with ``rights``, valid ``ttl`` seconds from ``now``,
        naming ``subject`` (a user) if given."""
        claims: dict[str, Any] = {
            "iat": math.floor(now),
            "exp": round(now + _checked_ttl(ttl), 3),
            CLAIM: {"projects": _project_claim(projects), "rights": list(_rights_claim(rights))},
        }
        if subject is not None:
            claims["sub"] = parse_subject(subject)
        if self.expected.audience is not None:
            claims["aud"] = self.expected.audience
        if self.expected.issuer is not None:
            claims["iss"] = self.expected.issuer
        return jwt.encode(claims, self._secret, algorithm=HMAC_ALGORITHM)


def public_key_algorithm(pem: bytes) -> tuple[str, Any]:
    """The JWT algorithm a PEM public key verifies (RS256 for RSA, ES256 for P-256), and the key."""
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError:
        raise ConfigError("the --jwt-public-key file is not a PEM public key") from None
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256", key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256", key
    raise ConfigError("the --jwt-public-key must be an RSA key (RS256) or a P-256 EC key (ES256)")


class Auth:
    """The server's rule: open (no key), or a valid token on every request."""

    def __init__(self, verifier: TokenVerifier | None) -> None:
        self.verifier = verifier

    @classmethod
    def from_settings(cls, settings: Settings) -> Auth:
        keys: dict[str, Any] = {}
        if settings.secret:
            keys[HMAC_ALGORITHM] = checked_secret(settings.secret)
        if settings.jwt_public_key:
            algorithm, key = public_key_algorithm(_read_key_file(settings.jwt_public_key))
            keys[algorithm] = key
        if not keys:
            if settings.require_auth:
                raise ConfigError("--require-auth is set but there is no --secret or --jwt-public-key")
            return cls(None)
        return cls(TokenVerifier(keys, Claims(settings.jwt_audience, settings.jwt_issuer)))

    @classmethod
    def from_secret(cls, secret: str | None, *, require: bool = False) -> Auth:
        if not secret:
            if require:
                raise ConfigError("--require-auth is set but there is no --secret (or JOBCAST_SECRET)")
            return cls(None)
        return cls(TokenSigner(secret))

    @property
    def open(self) -> bool:
        return self.verifier is None

    def authenticate(self, authorization: str | None, subprotocols: Sequence[str], now: float) -> Grant:
        """The grant of a request, from its Authorization header or else its WebSocket subprotocols."""
        if self.verifier is None:
            return OPEN
        token = bearer_token(authorization) or subprotocol_token(subprotocols)
        if token is None:
            raise AuthRequired()
        return self.verifier.verify(token, now)


def checked_secret(secret: str) -> bytes:
    if len(secret) < MIN_SECRET_LENGTH:
        raise ConfigError(f"the secret must be at least {MIN_SECRET_LENGTH} characters long")
    return secret.encode()


def _read_key_file(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read(64 * 1024)
    except OSError as exc:
        raise ConfigError(f"cannot read the --jwt-public-key file {path}: {exc.strerror or exc}") from None


def bearer_token(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def subprotocol_token(subprotocols: Sequence[str]) -> str | None:
    for offered in subprotocols:
        if offered.startswith(BEARER_SUBPROTOCOL):
            return offered[len(BEARER_SUBPROTOCOL) :] or None
    return None


def parse_ttl(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``1h``, ``7d``: seconds, greater than 0 and at most a year."""
    match = _TTL.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 90s, 30m, 1h or 7d")
    return _checked_ttl(float(match[1]) * _UNITS[match[2]])


def parse_rights(text: str) -> tuple[str, ...]:
    """``read,run`` as a tuple of known rights."""
    return _rights_claim(part.strip() for part in text.split(",") if part.strip())


def parse_subject(text: str) -> str:
    """A user name for ``--subject``: 1 to 128 printable ASCII characters, no spaces."""
    if not _SUBJECT.fullmatch(text):
        raise ValueError("a subject is 1 to 128 printable ASCII characters without spaces, like alice@example.com")
    return text


def _checked_ttl(ttl: float) -> float:
    if not (math.isfinite(ttl) and 0 < ttl <= MAX_TTL_SECONDS):
        raise ValueError("the lifetime must be greater than 0 and at most 366 days")
    return ttl


def _project_claim(projects: Sequence[str]) -> list[str] | str:
    if not projects:
        raise ValueError("a token needs at least one project, or '*' for all")
    if ALL_PROJECTS in projects:
        return ALL_PROJECTS
    for project_id in projects:
        if not PROJECT_ID.fullmatch(project_id):
            raise ValueError(f"{project_id[:80]!r} is not a project id")
    return sorted(set(projects))


def _rights_claim(rights: Iterable[str]) -> tuple[str, ...]:
    chosen = set(rights)
    if not chosen or not chosen <= set(RIGHTS):
        raise ValueError(f"rights are a comma-separated list of {', '.join(RIGHTS)}")
    return tuple(right for right in RIGHTS if right in chosen)


def _grant(claims: dict[str, Any], key: str) -> Grant:
    access, expires, subject = claims.get(CLAIM), claims.get("exp"), claims.get("sub")
    if not isinstance(access, dict):
        raise InvalidToken()
    projects, rights = access.get("projects"), access.get("rights")
    expires_at = _number(expires)
    if subject is not None and not (isinstance(subject, str) and _SUBJECT.fullmatch(subject)):
        raise InvalidToken()
    if not isinstance(rights, list) or not rights or not all(right in RIGHTS for right in rights):
        raise InvalidToken()
    if projects == ALL_PROJECTS:
        return Grant(None, frozenset(rights), expires_at, key, subject)
    if not isinstance(projects, list) or not all(isinstance(p, str) for p in projects):
        raise InvalidToken()
    return Grant(frozenset(projects), frozenset(rights), expires_at, key, subject)


def _number(value: object) -> float:
    """A NumericDate claim; InvalidToken for anything else."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise InvalidToken()
    return float(value)
