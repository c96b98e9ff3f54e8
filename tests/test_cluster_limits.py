"""On Redis the per-token start limit holds for the whole cluster, not once per process."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.guarded import SECRET, Tokens
from tests.redis_server import RedisServer
from tests.servers import jobcast_server
from tests.support import WAIT, eventually

PER_MINUTE = 4


def test_the_start_limit_holds_across_two_processes(tmp_path: Path, redis_server: RedisServer) -> None:
    """Four starts a minute: two through each process pass, the fifth is refused by whichever gets it."""
    args = ["--store", redis_server.url(), "--agent", "tests.agents:QuickAgent", "--demo-seconds", "0.05",
            "--starts-per-minute", str(PER_MINUTE)]  # fmt: skip
    env = {"JOBCAST_SECRET": SECRET}
    token = {"authorization": f"Bearer {Tokens().mint(('*',))}"}
    with (
        jobcast_server(args, tmp_path / "a.log", env) as first,
        jobcast_server(args, tmp_path / "b.log", env) as second,
    ):

        def start(server_url: str, project: str) -> httpx.Response:
            url = f"{server_url}/api/projects/{project}/agents/quick/refresh"
            return httpx.post(url, headers=token, timeout=WAIT)

        allowed = [start(url, f"p{n}") for n, url in enumerate([first.url, second.url] * (PER_MINUTE // 2))]
        assert [answer.status_code for answer in allowed] == [202] * PER_MINUTE
        for server_url in (first.url, second.url):  # each process alone has started only half its limit
            refused = start(server_url, "one-more")
            assert (refused.status_code, refused.json()["error"]["code"]) == (429, "rate_limited")
            assert 1 <= int(refused.headers["retry-after"]) <= 60
        other_token = {"authorization": f"Bearer {Tokens().mint(('*',), ('read', 'run'), ttl=300)}"}
        fresh = httpx.post(f"{first.url}/api/projects/z/agents/quick/refresh", headers=other_token, timeout=WAIT)
        assert fresh.status_code == 202  # the limit is per token


def test_the_connection_cap_holds_across_two_processes(tmp_path: Path, redis_server: RedisServer) -> None:
    """A cap of 2 per client address: one WebSocket on each process fills it, for both; closing one frees it."""
    args = ["--store", redis_server.url(), "--agent", "tests.agents:QuickAgent", "--max-connections-per-client", "2"]
    with (
        jobcast_server(args, tmp_path / "a.log") as first,
        jobcast_server(args, tmp_path / "b.log") as second,
        connect(f"ws://127.0.0.1:{first.port}/ws/projects/acme"),
    ):
        with connect(f"ws://127.0.0.1:{second.port}/ws/projects/acme"):
            # Each process publishes its streams every second: until both have, a third may get through.
            eventually(lambda: refused(first.port), what="a third stream refused by the first process")
            eventually(lambda: refused(second.port), what="a third stream refused by the second process")
        eventually(lambda: not refused(first.port), what="the freed slot usable through the other process")


def refused(port: int) -> bool:
    """Try one more stream: True if refused with 429 too_many_connections; if it got through, close it again."""
    try:
        with connect(f"ws://127.0.0.1:{port}/ws/projects/acme"):
            return False
    except InvalidStatus as exc:
        assert exc.response.status_code == 429
        assert json.loads(exc.response.body or b"{}")["error"]["code"] == "too_many_connections"
        return True
