"""Access tokens: minted and verified with the server's secret. Pure: no I/O, the clock is passed in.

A token is ``jc1.<payload>.<signature>``: the payload is compact JSON in base64url,
``{"p": ["acme"] | "*", "r": ["read", "run"], "exp": <unix seconds>}``, and the
signature is HMAC-SHA256 with the secret over ``jc1.<payload>``, in base64url. It is
compared in constant time, before anything in the payload is trusted.

Rights: ``read`` (state, history, every push transport) and ``run`` (start and cancel).

Without a secret, :class:`Auth` is open: every request gets :data:`OPEN`, which may do
anything. That is how jobcast ran before tokens, and ``jobcast serve`` warns about it.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import math
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .errors import AuthRequired, ConfigError, Forbidden, InvalidToken, TokenExpired

if TYPE_CHECKING:
    from .settings import Settings
from .validation import PROJECT_ID

RIGHTS = ("read", "run")
#: every project, in a token's project list
ALL_PROJECTS = "*"
#: the WebSocket subprotocol the server answers with; browsers offer it beside their token
SUBPROTOCOL = "jobcast"
#: a browser offers its token as the subprotocol ``jobcast.bearer.<token>``
BEARER_SUBPROTOCOL = "jobcast.bearer."
MIN_SECRET_LENGTH = 16
MAX_TTL_SECONDS = 366 * 24 * 3600.0

_VERSION = "jc1"
_MAX_TOKEN_LENGTH = 4096
_SHAPE = re.compile(r"jc1\.([A-Za-z0-9_-]{1,4000})\.([A-Za-z0-9_-]{43})")
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


class TokenSigner:
    """Mints and verifies tokens with one secret."""

    def __init__(self, secret: str) -> None:
        if len(secret) < MIN_SECRET_LENGTH:
            raise ConfigError(f"the secret must be at least {MIN_SECRET_LENGTH} characters long")
        self._key = secret.encode()

    def __repr__(self) -> str:
        return "TokenSigner(<secret>)"

    def mint(
        self, projects: Sequence[str], rights: Iterable[str], ttl: float, now: float, subject: str | None = None
    ) -> str:
        """A token for ``projects`` (``["*"]`` for all) with ``rights``, valid ``ttl`` seconds from ``now``,
        naming ``subject`` (a user) if given."""
        claims: dict[str, Any] = {
            "p": _project_claim(projects),
            "r": _rights_claim(rights),
            "exp": round(now + _checked_ttl(ttl), 3),
        }
        if subject is not None:
            claims["sub"] = parse_subject(subject)
        payload = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
        return f"{_VERSION}.{payload}.{self._sign(payload)}"

    def verify(self, token: str, now: float) -> Grant:
        """The token's grant; InvalidToken unless the signature matches, TokenExpired past its expiry."""
        match = _SHAPE.fullmatch(token) if len(token) <= _MAX_TOKEN_LENGTH else None
        if match is None or not hmac.compare_digest(match[2], self._sign(match[1])):
            raise InvalidToken()
        grant = _grant(_claims(match[1]), key=hashlib.sha256(token.encode()).hexdigest()[:32])
        if grant.expires_at is not None and now >= grant.expires_at:
            raise TokenExpired()
        return grant

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, f"{_VERSION}.{payload}".encode(), hashlib.sha256).digest())


class Auth:
    """The server's rule: open (no secret), or a valid token on every request."""

    def __init__(self, signer: TokenSigner | None) -> None:
        self.signer = signer

    @classmethod
    def from_settings(cls, settings: Settings) -> Auth:
        return cls.from_secret(settings.secret, require=settings.require_auth)

    @classmethod
    def from_secret(cls, secret: str | None, *, require: bool = False) -> Auth:
        if not secret:
            if require:
                raise ConfigError("--require-auth is set but there is no --secret (or JOBCAST_SECRET)")
            return cls(None)
        return cls(TokenSigner(secret))

    @property
    def open(self) -> bool:
        return self.signer is None

    def authenticate(self, authorization: str | None, subprotocols: Sequence[str], now: float) -> Grant:
        """The grant of a request, from its Authorization header or else its WebSocket subprotocols."""
        if self.signer is None:
            return OPEN
        token = bearer_token(authorization) or subprotocol_token(subprotocols)
        if token is None:
            raise AuthRequired()
        return self.signer.verify(token, now)


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


def _claims(payload: str) -> dict[str, Any]:
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):
        raise InvalidToken() from None
    if not isinstance(claims, dict):
        raise InvalidToken()
    return claims


def _grant(claims: dict[str, Any], key: str) -> Grant:
    projects, rights, expires, subject = claims.get("p"), claims.get("r"), claims.get("exp"), claims.get("sub")
    if not isinstance(expires, int | float) or isinstance(expires, bool) or not math.isfinite(expires):
        raise InvalidToken()
    if subject is not None and not (isinstance(subject, str) and _SUBJECT.fullmatch(subject)):
        raise InvalidToken()
    if not isinstance(rights, list) or not rights or not all(right in RIGHTS for right in rights):
        raise InvalidToken()
    if projects == ALL_PROJECTS:
        return Grant(None, frozenset(rights), float(expires), key, subject)
    if not isinstance(projects, list) or not all(isinstance(p, str) for p in projects):
        raise InvalidToken()
    return Grant(frozenset(projects), frozenset(rights), float(expires), key, subject)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
