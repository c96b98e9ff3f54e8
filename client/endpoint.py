"""A server's addresses: the HTTP routes and the WebSocket, from one base URL. Pure."""

from __future__ import annotations

import dataclasses
import urllib.parse

from .cursor import Cursor
from .errors import InvalidURL


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A jobcast server at ``base`` (``http://host:port``, maybe with a path prefix)."""

    base: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise InvalidURL(url)
        return cls(urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", "")))

    def http(self, path: str) -> str:
        return self.base + path

    def project(self, project_id: str, suffix: str = "") -> str:
        """The path of a project route; the id is quoted so the server, not the URL, judges it."""
        return f"/api/projects/{quote(project_id)}{suffix}"

    def ws(self, project_id: str, cursor: Cursor | None) -> str:
        scheme = "wss" if self.base.startswith("https:") else "ws"
        query = f"?{urllib.parse.urlencode({'epoch': cursor.epoch, 'after': cursor.after})}" if cursor else ""
        return f"{scheme}{self.base[self.base.index(':') :]}/ws/projects/{quote(project_id)}{query}"


def quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")
