"""The pure parts of push: cursor rules, client replies, SSE framing, subscriber queues, origins."""

from __future__ import annotations

import pytest

from jobcast.server.channel import Subscriber
from jobcast.server.cursor import Cursor, Resume, Snapshot, parse_cursor, parse_last_event_id, plan
from jobcast.server.origins import origin_allowed
from jobcast.server.wire import Batch, Message, client_reply, sse_frame

pytestmark = pytest.mark.anyio

EPOCH = "e1"


@pytest.mark.parametrize(
    ("cursor", "expected"),
    [
        (Cursor(EPOCH, 7), Resume(7)),  # from a position inside the window
        (Cursor(EPOCH, 10), Resume(10)),  # the same position as the log
        (Cursor(EPOCH, 5), Snapshot("the cursor is older than the history window")),
        (Cursor(EPOCH, 6), Resume(6)),  # the oldest position that can still resume
        (Cursor(EPOCH, 11), Snapshot("the cursor is ahead of the log")),
        (Cursor("other", 7), Snapshot("the cursor is from another epoch")),
        (None, Snapshot("no cursor")),
    ],
)
def test_the_recovery_table(cursor: Cursor | None, expected: object) -> None:
    """A cursor resumes only in the same epoch, inside the window and not ahead of the log."""
    assert plan(cursor, epoch=EPOCH, last_seq=10, history=4) == expected


@pytest.mark.parametrize(
    ("epoch", "after"),
    [(None, "3"), ("e1", None), ("e1", "-1"), ("e1", "abc"), ("e1", "1.5"), ("", "3"), ("e1", "9" * 30)],
)
def test_malformed_cursors_are_no_cursor(epoch: str | None, after: str | None) -> None:
    """Junk is treated as no cursor, so it gets a snapshot and never replays the whole log."""
    assert parse_cursor(epoch, after) is None


def test_last_event_id_is_epoch_colon_seq() -> None:
    """SSE's Last-Event-ID carries the same cursor as epoch:seq."""
    assert parse_last_event_id("e1:42") == Cursor("e1", 42)
    assert parse_last_event_id("junk") is None and parse_last_event_id(None) is None


@pytest.mark.parametrize(
    ("text", "reply"),
    [
        ('{"type": "ping"}', {"type": "pong"}),
        ("not json", {"type": "error", "code": "bad_json"}),
        ("[1, 2]", {"type": "error", "code": "bad_message"}),
        ('{"hello": 1}', {"type": "error", "code": "missing_type"}),
        ('{"type": "subscribe"}', {"type": "error", "code": "unknown_type"}),
    ],
)
def test_client_messages(text: str, reply: dict[str, str]) -> None:
    """ping gets pong; anything else gets an error with a stable code and a message."""
    answer = client_reply(text)
    assert {key: answer[key] for key in reply} == reply
    if answer["type"] == "error":
        assert answer["message"]


def test_sse_frames_carry_the_cursor_on_transitions_only() -> None:
    """Transitions get id: epoch:seq; progress has no id, so it never moves Last-Event-ID."""
    assert sse_frame(Message("job", '{"seq":3}', "e1:3")) == b'id: e1:3\nevent: job\ndata: {"seq":3}\n\n'
    assert sse_frame(Message("progress", "{}")) == b"event: progress\ndata: {}\n\n"


async def test_a_subscription_queues_transitions_and_keeps_only_the_latest_progress() -> None:
    """Transitions come in order and once; progress per job is coalesced to its newest value."""
    sub = Subscriber(limit=10)
    sub.push_event(1, Message("job", "a"), "j1", final=False)
    sub.push_event(1, Message("job", "a again"), "j1", final=False)
    sub.push_progress("j1", 1, Message("progress", "10%"))
    sub.push_progress("j1", 1, Message("progress", "20%"))
    sub.push_progress("j2", 5, Message("progress", "about a transition not yet sent"))
    assert [m.text for m in await sub.next_batch()] == ["a", "20%"]


async def test_a_final_transition_drops_pending_progress() -> None:
    """Nothing about a job follows its final state, not even queued progress."""
    sub = Subscriber(limit=10)
    sub.push_event(1, Message("job", "running"), "j1", final=False)
    sub.push_progress("j1", 1, Message("progress", "50%"))
    sub.push_event(2, Message("job", "completed"), "j1", final=True)
    assert [m.text for m in await sub.next_batch()] == ["running", "completed"]


async def test_rebase_skips_what_a_snapshot_already_covered() -> None:
    """Live events queued while the snapshot was read are trimmed to those after it."""
    sub = Subscriber(limit=10)
    for seq in (4, 5, 6):
        sub.push_event(seq, Message("job", str(seq)), "j", final=False)
    sub.rebase(5)
    assert [m.text for m in await sub.next_batch()] == ["6"]


def live_subscriber(writes: list[object]) -> Subscriber:
    """A subscriber past its opening whose socket takes every write."""
    sub = Subscriber(limit=10)
    sub.writer = lambda framed: writes.append(framed) is None
    sub.release()
    return sub


def test_transitions_read_together_go_to_a_keeping_up_socket_in_one_write() -> None:
    """A job's queued and running, read together, are one write of both frames, and move the cursor past both."""
    writes: list[object] = []
    sub = live_subscriber(writes)
    events = [(1, Message("job", "queued"), "j1", False), (2, Message("job", "running"), "j1", False)]
    batch = Batch.of(message for _, message, _, _ in events)
    sub.push_events(events, batch)
    assert writes == [batch] and batch.texts == (b"queued", b"running") and sub.last_seq == 2


async def test_transitions_read_together_skip_what_the_subscriber_has_and_queue_for_a_laggard() -> None:
    """A subscriber whose snapshot covered the first of them gets only the rest; one that is draining queues
    them in order, as single events would."""
    writes: list[object] = []
    sub = live_subscriber(writes)
    sub.rebase(1)
    events = [(1, Message("job", "queued"), "j1", False), (2, Message("job", "running"), "j1", False)]
    sub.push_events(events, Batch.of(message for _, message, _, _ in events))
    assert [framed.texts for framed in writes] == [(b"running",)]  # type: ignore[attr-defined]
    lagging = Subscriber(limit=10)  # still holding: its opening is being sent
    lagging.push_events(events, Batch.of(message for _, message, _, _ in events))
    assert [m.text for m in await lagging.next_batch()] == ["queued", "running"]


def test_overflow_flags_the_subscription() -> None:
    """Past its bound of transitions a subscription is flagged, never grown or blocked."""
    sub = Subscriber(limit=2)
    for seq in (1, 2, 3):
        sub.push_event(seq, Message("job", str(seq)), "j", final=False)
    assert sub.overflowed.is_set()


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),  # a CLI sends no Origin
        ("http://127.0.0.1:8000", True),  # the server's own origin
        ("https://dash.example", True),  # listed exactly
        ("http://127.0.0.1:9000", False),  # another port
        ("https://127.0.0.1:8000", False),  # another scheme
        ("null", False),
        ("https://dash.example.evil.com", False),  # a look-alike host
        ("https://evil-dash.example", False),
    ],
)
def test_origins_match_exactly(origin: str | None, allowed: bool) -> None:
    """Only the server's own origin and the exact allowlist may open a socket from a browser."""
    scope = {"scheme": "ws", "headers": [(b"host", b"127.0.0.1:8000")]}
    assert origin_allowed(scope, origin, ("https://dash.example",)) is allowed


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_a_prebuilt_frame_is_the_frame_websockets_would_send(size: int) -> None:
    """The fan-out frames a message once and writes those bytes to every socket without extensions."""
    from websockets.frames import Frame, Opcode

    from jobcast.server.wire import Batch, text_frame

    data = ("é" * size).encode()[:size]
    assert text_frame(data) == Frame(Opcode.TEXT, data).serialize(mask=False)
    first, second = Message("job", '{"a":1}'), Message("progress", "x" * size)
    batch = Batch.of([first, second])
    assert batch.texts == (first.data, second.data)
    assert batch.frame == first.frame + second.frame
