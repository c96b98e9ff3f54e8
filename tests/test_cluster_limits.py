"""On Redis the per-token start limit holds for the whole cluster, not once per process."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.guarded import SECRET, Tokens
from tests.redis_server import RedisServer
from tests.servers import jobcast_server
from tests.support import WAIT

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
