"""Security, as attacks on a real ``jobcast serve`` process: tokens, origins, limits, and leaks.

One guarded server (a secret, small limits) serves most tests; each test mints its own
tokens, so the per-token limits of one never touch another. Connection-cap tests come
from their own loopback addresses (127.0.0.2, ...), so the cap of 127.0.0.1 stays free.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import jwt
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from jobcast.client import JobcastClient, ServerRefused, subscribe
from jobcast.server.auth import TokenSigner
from tests.guarded import SECRET, Answer, Tokens, answer, bearer, receive, ws_answer, ws_connect
from tests.servers import JobcastServer, jobcast_command, jobcast_server
from tests.support import WAIT, eventually, lines_with, wait_for_log

pytestmark = pytest.mark.anyio

AGENTS = ["--agent", "tests.agents:QuickAgent", "--agent", "tests.agents:SleepyAgent"]
ALLOWED = "http://good.example"
CAP = 6
STARTS_PER_MINUTE = 3
MESSAGES_PER_SECOND = 5
GUARDED = [
    "--store", "memory://", "--demo-seconds", "30", *AGENTS,
    "--allowed-origins", ALLOWED,
    "--max-connections-per-client", str(CAP),
    "--starts-per-minute", str(STARTS_PER_MINUTE),
    "--ws-messages-per-second", str(MESSAGES_PER_SECOND),
]  # fmt: skip

#: every route that names a project, with the right it needs ({p} is the project)
PROJECT_ROUTES = [
    ("GET", "/api/projects/{p}", "read"),
    ("GET", "/api/projects/{p}/jobs", "read"),
    ("GET", "/api/projects/{p}/agents/quick/job", "read"),
    ("POST", "/api/projects/{p}/agents/quick/refresh", "run"),
    ("POST", "/api/projects/{p}/agents/quick/cancel", "run"),
    ("GET", "/api/projects/{p}/events?wait=0", "read"),
    ("GET", "/api/projects/{p}/events/stream", "read"),
    ("WS", "/ws/projects/{p}", "read"),
    ("GET", "/quick_agent/status/{p}", "run"),
    ("POST", "/quick_agent/status/{p}", "run"),
    ("GET", "/quick_agent/processing_status/{p}", "read"),
    ("GET", "/quick_agent/quick_status/{p}", "read"),
]
GLOBAL_ROUTES = [
    ("GET", "/api/agents", "read"),
    ("GET", "/api/projects", "read"),
    ("GET", f"/api/jobs/{'0' * 32}", "read"),
]
ALL_ROUTES = [(method, path.replace("{p}", "acme"), right) for method, path, right in PROJECT_ROUTES] + GLOBAL_ROUTES


@pytest.fixture(scope="module")
def tokens() -> Tokens:
    return Tokens()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, tokens: Tokens) -> Iterator[JobcastServer]:
    """The guarded server. Once it has stopped (and flushed), its log must hold no token any test used.

    The secret comes from JOBCAST_SECRET, as an operator should pass it (not on the command line).
    """
    log = tmp_path_factory.mktemp("guarded") / "server.log"
    env = {"JOBCAST_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}  # log lines at once, for the tests that wait on them
    with jobcast_server(GUARDED, log, env=env) as server:
        yield server
    assert_no_secrets(log.read_text(), tokens)


def assert_no_secrets(log: str, tokens: Tokens) -> None:
    decoded = urllib.parse.unquote(log)  # a token a client percent-encoded counts too
    assert SECRET not in log and SECRET not in decoded
    for minted in tokens.minted:
        assert minted not in log and minted not in decoded
        signature = minted.split(".")[2]
        assert not signature or signature not in log  # not even its signature


def log_lines(server: JobcastServer, *needles: str) -> list[str]:
    return lines_with(server.log, *needles)


async def wait_for_server_log(server: JobcastServer, *needles: str, count: int = 1) -> list[str]:
    return await wait_for_log(lambda: server.log, *needles, count=count)


def all_answers(answers: list[Answer]) -> str:
    return "\n".join(a.text for a in answers)


# -- 1. tokens ------------------------------------------------------------------------------------


async def test_a_minted_token_opens_every_route_of_its_project(guarded: JobcastServer, tokens: Tokens) -> None:
    """A valid read+run token for acme is let through on every route: API, legacy, SSE, long-poll, WebSocket."""
    headers = bearer(tokens.mint(("acme",)))
    for method, path, _ in ALL_ROUTES:
        got = await answer(guarded.url, method, path, headers)
        assert got.status not in (401, 403), (method, path, got)
    assert (await answer(guarded.url, "GET", "/api/projects/acme", headers)).status == 200
    assert (await answer(guarded.url, "WS", "/ws/projects/acme", headers)).status == 101


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("no token", 401, "auth_required"),
        ("forged", 401, "invalid_token"),
        ("tampered", 401, "invalid_token"),
        ("garbage", 401, "invalid_token"),
        ("expired", 401, "token_expired"),
        ("alg none", 401, "invalid_token"),
    ],
)
async def test_no_forged_or_expired_token_gets_401_on_every_route(
    guarded: JobcastServer, tokens: Tokens, case: str, status: int, code: str
) -> None:
    """Without a valid token every route answers 401 (refused at the handshake for a WebSocket), and says why."""
    token = {
        "no token": None,
        "forged": tokens.forged(),
        "tampered": tokens.tampered(),
        "garbage": "eyJnot-a-token.at-all.really",
        "expired": tokens.expired(),
        "alg none": tokens.unsigned(),
    }[case]
    for method, path, _ in ALL_ROUTES:
        got = await answer(guarded.url, method, path, bearer(token))
        assert (got.status, got.code) == (status, code), (method, path, got)
        assert got.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("case", ["wrong project", "wrong right"])
async def test_a_valid_token_without_the_project_or_the_right_gets_403(
    guarded: JobcastServer, tokens: Tokens, case: str
) -> None:
    """A valid token for another project, or lacking the route's right, gets 403 forbidden everywhere."""
    for method, path, right in PROJECT_ROUTES:
        if case == "wrong project":
            token = tokens.mint(("globex",))
        else:
            token = tokens.mint(("acme",), rights=["run" if right == "read" else "read"])
        got = await answer(guarded.url, method, path.replace("{p}", "acme"), bearer(token))
        assert (got.status, got.code) == (403, "forbidden"), (method, path, got)


async def test_out_of_scope_projects_answer_alike_whether_they_exist_or_not(
    guarded: JobcastServer, tokens: Tokens
) -> None:
    """A project outside the token's scope gets byte-identical answers whether it has jobs or never existed."""
    async with JobcastClient(guarded.url, token=tokens.mint(("*",))) as admin:
        hidden_job = (await admin.start("hidden", "quick")).job["job_id"]
    acme_only = bearer(tokens.mint(("acme",)))
    for method, path, _ in PROJECT_ROUTES:
        exists = await answer(guarded.url, method, path.replace("{p}", "hidden"), acme_only)
        never = await answer(guarded.url, method, path.replace("{p}", "ghost"), acme_only)
        assert exists.status == never.status == 403, (method, path)
        assert exists.body == never.body, (method, path)
    fake_job = uuid.uuid4().hex
    real = await answer(guarded.url, "GET", f"/api/jobs/{hidden_job}", acme_only)
    fake = await answer(guarded.url, "GET", f"/api/jobs/{fake_job}", acme_only)
    assert real.status == fake.status == 404 and real.code == "job_not_found"
    assert real.text.replace(hidden_job, "ID") == fake.text.replace(fake_job, "ID")
    listed = await answer(guarded.url, "GET", "/api/projects", acme_only)
    assert listed.status == 200 and "hidden" not in listed.body["projects"]  # type: ignore[index]


def test_jobcast_token_prints_only_a_token_that_the_server_accepts(guarded: JobcastServer, tokens: Tokens) -> None:
    """`jobcast token --secret S --project P --project Q --rights read,run --ttl 1h` prints one line: the token."""
    result = subprocess.run(
        [*jobcast_command(), "token", "--secret", SECRET, "--project", "acme", "--project", "globex",
         "--rights", "read,run", "--ttl", "1h"],
        capture_output=True, text=True, timeout=WAIT, check=True,
    )  # fmt: skip
    assert result.stderr == ""
    token = result.stdout.removesuffix("\n")
    tokens.minted.append(token)
    assert re.fullmatch(r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}", token)  # an HS256 JWT
    grant = TokenSigner(SECRET).verify(token, time.time())
    assert grant.projects == {"acme", "globex"} and grant.rights == {"read", "run"}
    assert 3590 < grant.expires_at - time.time() <= 3600  # type: ignore[operator]
    for project, status in [("acme", 200), ("globex", 200), ("initech", 403)]:
        assert (
            httpx.get(f"{guarded.url}/api/projects/{project}", headers=bearer(token), timeout=WAIT).status_code
            == status
        )


async def test_a_server_given_an_identity_services_public_key_only_verifies_its_tokens(tmp_path: Path) -> None:
    """--jwt-public-key: RS256 tokens an identity service mints work; every forgery keeps its 401 code."""
    private = rsa.generate_private_key(65537, 2048)
    pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "id.pem").write_bytes(pem)
    issuer = "https://id.example.com"
    claims = {
        "sub": "alice",
        "iss": issuer,
        "exp": time.time() + 600,
        "jobcast": {"projects": ["acme"], "rights": ["read"]},
    }
    hs256_with_the_public_key = jwt.api_jws.PyJWS()
    hs256_with_the_public_key._algorithms["HS256"].prepare_key = lambda key: key  # type: ignore[method-assign]
    cases = {
        "the service's token": (jwt.encode(claims, private, algorithm="RS256"), "/api/projects/acme", 200, None),
        "another project": (jwt.encode(claims, private, algorithm="RS256"), "/api/projects/globex", 403, "forbidden"),
        "expired": (jwt.encode({**claims, "exp": time.time() - 1}, private, algorithm="RS256"),
                    "/api/projects/acme", 401, "token_expired"),
        "another issuer": (jwt.encode({**claims, "iss": "https://evil.example.com"}, private, algorithm="RS256"),
                           "/api/projects/acme", 401, "invalid_token"),
        "public key as HMAC secret": (
            hs256_with_the_public_key.encode(json.dumps(claims).encode(), pem, algorithm="HS256"),
            "/api/projects/acme", 401, "invalid_token",
        ),
        "alg none": (jwt.encode(claims, None, algorithm="none"), "/api/projects/acme", 401, "invalid_token"),
        "no token": (None, "/api/projects/acme", 401, "auth_required"),
    }  # fmt: skip
    args = ["--store", "memory://", "--jwt-public-key", str(tmp_path / "id.pem"), "--jwt-issuer", issuer, *AGENTS]
    with jobcast_server(args, tmp_path / "server.log", env={"JOBCAST_SECRET": ""}) as server:
        for case, (token, path, status, code) in cases.items():
            got = await answer(server.url, "GET", path, bearer(token))
            assert (got.status, got.code) == (status, code), case


def test_jobcast_token_mints_a_standard_jwt_any_library_verifies() -> None:
    """`jobcast token` output is an HS256 JWT with sub, iat, exp, aud, iss and the jobcast claim: PyJWT verifies it."""
    result = subprocess.run(
        [*jobcast_command(), "token", "--secret", SECRET, "--project", "acme", "--rights", "read",
         "--subject", "alice", "--audience", "jobcast", "--issuer", "https://app.example.com", "--ttl", "90"],
        capture_output=True, text=True, timeout=WAIT, check=True, env=_env({}),
    )  # fmt: skip
    claims = jwt.decode(
        result.stdout.strip(), SECRET, algorithms=["HS256"], audience="jobcast", issuer="https://app.example.com"
    )
    assert claims["sub"] == "alice" and claims["jobcast"] == {"projects": ["acme"], "rights": ["read"]}
    assert 0 < claims["exp"] - claims["iat"] <= 91


def test_jobcast_token_refuses_bad_input_without_printing_a_token() -> None:
    """A missing secret, a short secret, an unknown right or a bad ttl: exit 2, a message, nothing on stdout."""
    base = [*jobcast_command(), "token", "--project", "acme"]
    for extra, env in [
        ([], {"JOBCAST_SECRET": ""}),
        (["--secret", "short"], {}),
        (["--secret", SECRET, "--rights", "read,root"], {}),
        (["--secret", SECRET, "--ttl", "forever"], {}),
    ]:
        result = subprocess.run([*base, *extra], capture_output=True, text=True, timeout=WAIT, env=_env(env))
        assert result.returncode == 2 and result.stdout == "" and "error" in result.stderr, extra


async def test_browsers_send_the_token_as_a_websocket_subprotocol(guarded: JobcastServer, tokens: Tokens) -> None:
    """The subprotocol ``jobcast.bearer.<token>`` opens the socket; the server answers ``jobcast``, never the token."""
    token = tokens.mint(("acme",))
    async with ws_connect(guarded.url, "/ws/projects/acme", subprotocols=["jobcast", f"jobcast.bearer.{token}"]) as ws:
        assert ws.subprotocol == "jobcast"
        assert (await receive(ws))["type"] == "snapshot"
    forged = await ws_answer(guarded.url, "/ws/projects/acme", {}, ["jobcast", f"jobcast.bearer.{tokens.forged()}"])
    assert (forged.status, forged.code) == (401, "invalid_token")


async def test_a_token_in_the_query_string_is_not_accepted(guarded: JobcastServer, tokens: Tokens) -> None:
    """``?token=`` and ``?access_token=`` are ignored: 401, on HTTP and WebSocket alike."""
    token = tokens.mint(("acme",))
    for method, path in [
        ("GET", "/api/projects/acme"),
        ("GET", "/api/projects/acme/events/stream"),
        ("WS", "/ws/projects/acme"),
    ]:
        for name in ("token", "access_token"):
            got = await answer(guarded.url, method, f"{path}?{name}={token}")
            assert (got.status, got.code) == (401, "auth_required"), (method, path, name)


async def test_a_websocket_is_closed_with_1008_when_its_token_expires(guarded: JobcastServer, tokens: Tokens) -> None:
    """A socket open with a 2 s token is closed with 1008 at its expiry, its SSE stream ends, and neither reopens."""
    token = tokens.mint(("acme",), ttl=2)
    expires_at = TokenSigner(SECRET).verify(token, time.time()).expires_at
    assert expires_at is not None
    async with (
        ws_connect(guarded.url, "/ws/projects/acme", bearer(token)) as ws,
        httpx.AsyncClient(base_url=guarded.url, timeout=WAIT) as http,
        http.stream("GET", "/api/projects/acme/events/stream", headers=bearer(token)) as stream,
    ):
        assert stream.status_code == 200
        assert (await receive(ws))["type"] == "snapshot"
        with anyio.fail_after(WAIT), pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await ws.recv()
        assert time.time() >= expires_at - 0.05
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        with anyio.fail_after(WAIT):
            async for _ in stream.aiter_lines():
                pass  # the stream ends by itself at expiry
    again = await answer(guarded.url, "WS", "/ws/projects/acme", bearer(token))
    assert (again.status, again.code) == (401, "token_expired")


async def test_the_client_library_stops_with_token_expired(guarded: JobcastServer, tokens: Tokens) -> None:
    """A subscription whose token expires reconnects once, meets the 401, and raises ServerRefused token_expired."""
    token = tokens.mint(("acme",), ttl=2)
    async with subscribe(guarded.url, "acme", token=token, transport="sse") as events:
        with anyio.fail_after(WAIT), pytest.raises(ServerRefused) as refused:
            async for _ in events:
                pass
    assert (refused.value.status, refused.value.code) == (401, "token_expired")


# -- the client and the CLI, with and without a token ----------------------------------------------


@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
async def test_the_client_sends_its_token_on_every_transport(
    guarded: JobcastServer, tokens: Tokens, transport: Any
) -> None:
    """subscribe(token=...) follows the project over each transport; without a token it fails at once with 401."""
    async with subscribe(guarded.url, "acme", token=tokens.mint(("acme",)), transport=transport) as events:
        with anyio.fail_after(WAIT):
            assert (await anext(aiter(events)))["type"] == "snapshot"
    async with subscribe(guarded.url, "acme", transport=transport) as events:
        with anyio.fail_after(WAIT), pytest.raises(ServerRefused) as refused:
            await anext(aiter(events))
    assert (refused.value.status, refused.value.code) == (401, "auth_required")


async def test_the_auto_transport_does_not_fall_back_on_a_refused_token(guarded: JobcastServer, tokens: Tokens) -> None:
    """A 403 for the token is the same on every transport: auto raises it instead of trying SSE and long-poll."""
    fallbacks: list[Any] = []
    token = tokens.mint(("globex",))
    async with subscribe(guarded.url, "acme", token=token, on_fallback=fallbacks.append) as events:
        with anyio.fail_after(WAIT), pytest.raises(ServerRefused) as refused:
            await anext(aiter(events))
    assert (refused.value.status, refused.value.code, fallbacks) == (403, "forbidden", [])


def test_the_cli_takes_its_token_from_jobcast_token_or_token(guarded: JobcastServer, tokens: Tokens) -> None:
    """`jobcast refresh` works with JOBCAST_TOKEN or --token; without one it exits 2 and names auth_required."""
    command = [*jobcast_command(), "refresh", "cli", "--agent", "quick", "--url", guarded.url]
    token = tokens.mint(("cli",))
    by_env = subprocess.run(command, capture_output=True, text=True, timeout=WAIT, env=_env({"JOBCAST_TOKEN": token}))
    assert by_env.returncode == 0, by_env.stderr
    by_option = subprocess.run([*command, "--token", token], capture_output=True, text=True, timeout=WAIT, env=_env({}))
    assert by_option.returncode == 0, by_option.stderr
    without = subprocess.run(command, capture_output=True, text=True, timeout=WAIT, env=_env({"JOBCAST_TOKEN": ""}))
    assert without.returncode == 2 and "auth_required" in without.stderr
    assert token not in by_env.stdout + by_env.stderr + by_option.stdout + by_option.stderr


# -- 2. origins -------------------------------------------------------------------------------------


ORIGIN_CASES = [
    ("own", True),
    (ALLOWED, True),
    ("null", False),
    ("http://127.0.0.1:1", False),  # another port
    ("https://own", False),  # another scheme
    ("http://good.example.evil.com", False),  # a look-alike host
    ("http://evil.good.example", False),
    ("http://good.example:8080", False),
    ("HTTP://GOOD.EXAMPLE", False),  # no normalising: exact only
]


@pytest.mark.parametrize(("origin", "allowed"), ORIGIN_CASES)
async def test_only_the_own_origin_and_the_exact_allowlist_pass(
    guarded: JobcastServer, tokens: Tokens, origin: str, allowed: bool
) -> None:
    """Each Origin case on the WebSocket, SSE, long-poll and a POST: allowed ones work, others get 403 first."""
    own = guarded.url.removeprefix("http://")
    value = {"own": f"http://{own}", "https://own": f"https://{own}"}.get(origin, origin)
    headers = {"Origin": value, **bearer(tokens.mint(("acme",)))}
    routes = [
        ("WS", "/ws/projects/acme"),
        ("GET", "/api/projects/acme/events/stream"),
        ("GET", "/api/projects/acme/events?wait=0"),
        ("POST", "/api/projects/acme/agents/quick/cancel"),
    ]
    for method, path in routes:
        got = await answer(guarded.url, method, path, headers)
        if allowed:
            assert got.status in (101, 200, 409), (method, path, got)  # 409: nothing to cancel
        else:
            assert (got.status, got.code) == (403, "origin_not_allowed"), (method, path, got)


async def test_a_foreign_origin_is_refused_even_without_a_token_and_the_allowed_one_gets_cors(
    guarded: JobcastServer,
) -> None:
    """The Origin check comes first; a listed origin's preflight is answered, a foreign one's is refused."""
    got = await answer(guarded.url, "GET", "/api/projects/acme", {"Origin": "http://evil.example"})
    assert (got.status, got.code) == (403, "origin_not_allowed")
    preflight = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}
    listed = await answer(guarded.url, "OPTIONS", "/api/projects/acme", {"Origin": ALLOWED, **preflight})
    assert listed.status == 200 and listed.headers["access-control-allow-origin"] == ALLOWED
    foreign = await answer(guarded.url, "OPTIONS", "/api/projects/acme", {"Origin": "http://evil.example", **preflight})
    assert foreign.status == 403 and "access-control-allow-origin" not in foreign.headers


def test_in_open_mode_another_sites_page_cannot_start_a_job_without_an_origin(tmp_path: Path) -> None:
    """Simple cross-site GETs carry no Origin; their Fetch Metadata gets them refused, links to pages still work."""
    other_site = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
    link = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    with jobcast_server(["--store", "memory://", *AGENTS], tmp_path / "open.log", env={"JOBCAST_SECRET": ""}) as server:
        image = httpx.get(f"{server.url}/quick_agent/status/acme", headers=other_site)
        followed_to_start = httpx.get(f"{server.url}/quick_agent/status/acme", headers=link)
        same_site_port = httpx.get(
            f"{server.url}/quick_agent/status/acme", headers={**other_site, "Sec-Fetch-Site": "same-site"}
        )
        history = httpx.get(f"{server.url}/api/projects/acme/jobs").json()["jobs"]
        followed_to_page = httpx.get(f"{server.url}/projects/acme", headers=link)
        script = httpx.get(f"{server.url}/quick_agent/status/acme")  # an old polling client: no browser headers
    for refused in (image, followed_to_start, same_site_port):
        assert (refused.status_code, refused.json()["error"]["code"]) == (403, "origin_not_allowed")
    assert history == []  # none of them started anything
    assert followed_to_page.status_code == 200 and script.status_code == 200


# -- 3. limits --------------------------------------------------------------------------------------


async def test_the_connection_cap_counts_websockets_and_streams_per_client_address(
    guarded: JobcastServer, tokens: Tokens
) -> None:
    """Past --max-connections-per-client, WebSocket, SSE and long-poll are refused with 429; other addresses are not."""
    headers = bearer(tokens.mint(("acme",)))
    here = {"local_addr": ("127.0.0.2", 0)}
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=guarded.url, transport=transport, timeout=WAIT)
        )
        sockets = [await stack.enter_async_context(ws_connect(guarded.url, "/ws/projects/acme", headers, **here))
                   for _ in range(CAP - 2)]  # fmt: skip
        for _ in range(2):
            stream = await stack.enter_async_context(
                http.stream("GET", "/api/projects/acme/events/stream", headers=headers)
            )
            assert stream.status_code == 200
        with pytest.raises(websockets.InvalidStatus) as refused:
            await stack.enter_async_context(ws_connect(guarded.url, "/ws/projects/acme", headers, **here))
        assert refused.value.response.status_code == 429
        assert b"too_many_connections" in bytes(refused.value.response.body or b"")
        for path in ("/api/projects/acme/events/stream", "/api/projects/acme/events?wait=0"):
            response = await http.get(path, headers=headers)
            assert (response.status_code, response.json()["error"]["code"]) == (429, "too_many_connections")
        other = {"local_addr": ("127.0.0.3", 0)}
        async with ws_connect(guarded.url, "/ws/projects/acme", headers, **other) as ws:
            assert (await receive(ws))["type"] == "snapshot"
        await sockets.pop().close()
        with anyio.fail_after(WAIT):  # the server counts the closed socket out as soon as it sees the close
            while True:
                try:
                    async with ws_connect(guarded.url, "/ws/projects/acme", headers, **here) as ws:
                        assert (await receive(ws))["type"] == "snapshot"
                        break
                except websockets.InvalidStatus as exc:
                    assert exc.response.status_code == 429
                    await anyio.sleep(0.02)
    await wait_for_server_log(guarded, "127.0.0.2", "429 too_many_connections", count=3)


async def test_a_flood_of_job_starts_gets_429_with_retry_after_per_token(
    guarded: JobcastServer, tokens: Tokens
) -> None:
    """Past --starts-per-minute a token's starts get 429 rate_limited with Retry-After; another token still starts."""
    flooder = bearer(tokens.mint(("flood",)))
    statuses = []
    for _ in range(STARTS_PER_MINUTE):
        statuses.append(
            (await answer(guarded.url, "POST", "/api/projects/flood/agents/sleepy/refresh", flooder)).status
        )
    assert statuses == [202] + [200] * (STARTS_PER_MINUTE - 1)  # the first starts, the rest join it
    for method, path in [("POST", "/api/projects/flood/agents/quick/refresh"), ("GET", "/quick_agent/status/flood")]:
        got = await answer(guarded.url, method, path, flooder)
        assert (got.status, got.code) == (429, "rate_limited"), path
        assert 1 <= int(got.headers["retry-after"]) <= 60
    other = await answer(
        guarded.url, "POST", "/api/projects/flood/agents/quick/refresh", bearer(tokens.mint(("flood",)))
    )
    assert other.status in (200, 202)
    lines = await wait_for_server_log(guarded, "/flood", "429 rate_limited", count=2)
    assert len(lines) == 2  # once per refused start
    await answer(guarded.url, "POST", "/api/projects/flood/agents/sleepy/cancel", bearer(tokens.mint(("flood",))))


async def test_an_oversized_message_is_closed_with_1009(guarded: JobcastServer, tokens: Tokens) -> None:
    """A message over 64 KiB closes the socket with 1009, and the server logs it once."""
    async with ws_connect(guarded.url, "/ws/projects/acme", bearer(tokens.mint(("acme",))), max_size=None) as ws:
        await receive(ws)
        local_port = ws.local_address[1]
        await ws.send("x" * (64 * 1024 + 1))
        with anyio.fail_after(WAIT), pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert len(await wait_for_server_log(guarded, f":{local_port}", "over 64 KiB")) == 1


async def test_a_client_that_sends_too_fast_is_closed_with_1008(guarded: JobcastServer, tokens: Tokens) -> None:
    """Past --ws-messages-per-second (after a second's burst) the socket is closed with 1008, logged once."""
    async with ws_connect(guarded.url, "/ws/projects/acme", bearer(tokens.mint(("acme",)))) as ws:
        await receive(ws)
        local_port = ws.local_address[1]
        with anyio.fail_after(WAIT), pytest.raises(websockets.ConnectionClosed) as closed:
            for _ in range(MESSAGES_PER_SECOND * 4):
                await ws.send('{"type": "ping"}')
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert len(await wait_for_server_log(guarded, f":{local_port}", "messages too fast")) == 1


async def test_permessage_deflate_is_off_by_default(guarded: JobcastServer, tokens: Tokens) -> None:
    """A client offering permessage-deflate gets no extension back unless the server has --ws-compression."""
    got = await ws_answer(guarded.url, "/ws/projects/acme", bearer(tokens.mint(("acme",))))
    assert got.status == 101 and "sec-websocket-extensions" not in got.headers


def test_a_full_queue_answers_503_queue_full(tmp_path: Path) -> None:
    """With --threads 1 --max-queued 2, a third queued job is refused with 503 queue_full."""
    args = ["--store", "memory://", "--threads", "1", "--max-queued", "2", "--demo-seconds", "30", *AGENTS]
    with jobcast_server(args, tmp_path / "server.log", env={"JOBCAST_SECRET": SECRET}) as server:
        with httpx.Client(base_url=server.url, headers=bearer(Tokens().mint(("*",))), timeout=WAIT) as http:
            running = http.post("/api/projects/q0/agents/sleepy/refresh").json()["job"]
            wait_until(lambda: http.get(f"/api/jobs/{running['job_id']}").json()["status"] == "running")
            assert [http.post(f"/api/projects/q{n}/agents/sleepy/refresh").status_code for n in (1, 2)] == [202, 202]
            full = http.post("/api/projects/q3/agents/sleepy/refresh")
            assert (full.status_code, full.json()["error"]["code"]) == (503, "queue_full")
            legacy = http.post("/sleepy_agent/status/q4")
            assert (legacy.status_code, legacy.json()["error"]["code"]) == (503, "queue_full")
    assert len([line for line in server.log.splitlines() if "503 queue_full" in line]) == 2


# -- open mode and --require-auth -------------------------------------------------------------------


def test_open_mode_warns_loudly_and_needs_no_token(tmp_path: Path) -> None:
    """Without a secret the server logs a loud warning at start and answers without tokens, as before."""
    args = ["--store", "memory://", *AGENTS, "--ws-compression"]
    with jobcast_server(args, tmp_path / "server.log", env={"JOBCAST_SECRET": ""}) as server:
        assert httpx.get(f"{server.url}/api/projects/acme", timeout=WAIT).status_code == 200
        assert log_lines(server, "WARNING", "running OPEN")
        offered = anyio.run(ws_answer, server.url, "/ws/projects/acme", {})
        assert "permessage-deflate" in offered.headers.get("sec-websocket-extensions", "")  # --ws-compression


def test_require_auth_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    """--require-auth without a secret exits 2 at once with one line; with a short secret too."""
    for extra, env in [([], {"JOBCAST_SECRET": ""}), ([], {"JOBCAST_SECRET": "too-short"})]:
        result = subprocess.run(
            [*jobcast_command(), "serve", "--port", "0", "--store", "memory://", "--require-auth", *extra],
            capture_output=True, text=True, timeout=WAIT, env=_env(env),
        )  # fmt: skip
        assert result.returncode == 2 and result.stderr.startswith("jobcast: error:"), result.stderr
        assert "Traceback" not in result.stderr and "too-short" not in result.stderr


# -- 4. no leaks ------------------------------------------------------------------------------------


async def test_error_bodies_carry_no_traceback_path_or_secret(guarded: JobcastServer, tokens: Tokens) -> None:
    """Every error the attacks provoke is short JSON: no traceback, no file path, no secret, no token."""
    token = tokens.mint(("acme",))
    probes = [
        ("GET", "/api/projects/-bad", bearer(token)),
        ("GET", "/api/projects/acme/jobs?limit=x", bearer(token)),
        ("POST", "/api/projects/acme/agents/legal/refresh", bearer(token)),
        ("DELETE", "/api/projects/acme", bearer(token)),
        ("GET", "/api/nothing", bearer(token)),
        ("GET", "/api/projects/acme", bearer(tokens.forged())),
        ("GET", "/api/projects/acme", {"Authorization": "Bearer " + "A" * 100_00}),
        ("GET", "/api/projects/acme", {"Authorization": "Basic dXNlcjpwYXNz"}),
        ("GET", "/api/projects/acme", {"Authorization": f"Bearer {token}!"}),
        ("WS", "/ws/projects/-bad", bearer(token)),
    ]
    answers = [await answer(guarded.url, method, path, headers) for method, path, headers in probes]
    assert all(a.status >= 400 and a.body is not None and set(a.body) == {"error"} for a in answers), answers
    text = all_answers(answers)
    for leak in ("Traceback", 'File "', ".py", "/work", "/usr", SECRET, token):
        assert leak not in text


def test_no_token_or_secret_reaches_the_server_log(tmp_path: Path) -> None:
    """Tokens in headers, subprotocols and URLs, valid, forged and expired: after the server stops, its log
    (uvicorn's access log included, at debug level) holds none of them, and one line per refusal."""
    tokens, log = Tokens(), tmp_path / "server.log"
    args = ["--store", "memory://", *AGENTS, "--log-level", "debug"]
    with jobcast_server(args, log, env={"JOBCAST_SECRET": SECRET}) as server:
        anyio.run(_attacks_with_tokens, server.url, tokens)
    text = log.read_text()
    assert_no_secrets(text, tokens)
    assert GARBAGE not in text  # not even a bearer value that is no token at all
    assert "?token=[redacted]&access_token=[redacted]" in text  # the access log line is there, redacted
    for n in range(3):
        assert (
            len([line for line in text.splitlines() if f"/logprobe{n} from" in line and "invalid_token" in line]) == 1
        )
    assert len([line for line in text.splitlines() if "refused WebSocket /ws/projects/acme" in line]) == 4
    assert "connection rejected" not in text and "without completing handshake" not in text  # jobcast's line only


async def _attacks_with_tokens(url: str, tokens: Tokens) -> None:
    token = tokens.mint(("acme",))
    assert (await answer(url, "GET", "/api/projects/acme", bearer(token))).status == 200
    assert (await answer(url, "GET", f"/api/projects/acme?token={token}&access_token={token}")).status == 401
    assert (await answer(url, "GET", f"/api/projects/acme?after=1&x={token}", bearer(token))).status == 200
    dots_encoded = token.replace(".", "%2E")
    assert (await answer(url, "GET", f"/api/projects/acme?foo={dots_encoded}", bearer(token))).status == 200
    all_encoded = "".join(f"%{byte:02X}" for byte in token.encode())
    assert (await answer(url, "GET", f"/api/projects/acme?foo={all_encoded}", bearer(token))).status == 200
    assert (await answer(url, "POST", f"/api/projects/acme/agents/quick/refresh#{token}", bearer(token))).status == 202
    subprotocols = ["jobcast", f"jobcast.bearer.{token}"]
    assert (await ws_answer(url, f"/ws/projects/acme?token={token}", {}, subprotocols)).status == 101
    assert (await ws_answer(url, "/ws/projects/acme", bearer(tokens.expired()))).status == 401
    assert (
        await ws_answer(url, "/ws/projects/acme", {}, ["jobcast", f"jobcast.bearer.{tokens.forged()}"])
    ).status == 401
    for n in range(3):
        assert (await answer(url, "GET", f"/api/projects/logprobe{n}", bearer(tokens.forged()))).status == 401
    assert (await ws_answer(url, "/ws/projects/acme", bearer(GARBAGE))).status == 401
    assert (await ws_answer(url, "/ws/projects/acme", {}, ["jobcast", f"jobcast.bearer.{GARBAGE}"])).status == 401


# -- helpers ------------------------------------------------------------------------------------------


GARBAGE = f"not-a-jobcast-token-{uuid.uuid4().hex}"


def _env(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, "JOBCAST_SECRET": "", "JOBCAST_TOKEN": "", **extra}


def wait_until(condition: Any) -> None:
    eventually(condition)
