"""The SSE framing, both ends: the server's frames (jobcast.server.wire) read by the client's parser."""

from __future__ import annotations

import json

import pytest

from jobcast.client.errors import ProtocolError
from jobcast.client.transports import SseParser
from jobcast.server.wire import SSE_KEEPALIVE, SSE_RETRY, Message, encode, sse_frame, sse_frames


def parse(stream: bytes) -> list[dict[str, object]]:
    """Feed a stream to the client's parser line by line, as its transport does."""
    parser, messages = SseParser(), []
    for line in stream.decode().replace("\r\n", "\n").split("\n"):
        message = parser.feed(line)
        if message is not None:
            messages.append(message)
    return messages


JOB = Message("job", encode({"type": "job", "seq": 7, "job": {"status": "running"}}), "e1:7")
PROGRESS = Message("progress", encode({"type": "progress", "percent": 50, "message": "a\\nb: c"}))


def test_a_transition_frame_carries_its_id_event_and_data() -> None:
    """id: epoch:seq, event: type and data: the JSON, then a blank line; progress has no id."""
    assert sse_frame(JOB) == b'id: e1:7\nevent: job\ndata: {"type":"job","seq":7,"job":{"status":"running"}}\n\n'
    assert not sse_frame(PROGRESS).startswith(b"id:")


def test_the_client_reads_back_exactly_what_the_server_framed() -> None:
    """Retry, keep-alive comments and several frames in one chunk come back as the messages, in order."""
    stream = SSE_RETRY + sse_frames([JOB, PROGRESS]) + SSE_KEEPALIVE + sse_frame(JOB)
    assert parse(stream) == [json.loads(JOB.text), json.loads(PROGRESS.text), json.loads(JOB.text)]


def test_crlf_line_ends_and_data_split_over_lines_are_read() -> None:
    """A proxy may rewrite line ends; a frame may carry its data on several lines, joined with newlines."""
    stream = b'event: job\r\ndata: {"type":\r\ndata: "pong"}\r\n\r\n'
    assert parse(stream) == [{"type": "pong"}]


@pytest.mark.parametrize("data", [b"data: not json\n\n", b"data: [1, 2]\n\n", b'data: {"no": "type"}\n\n'])
def test_a_frame_that_is_no_jobcast_message_is_a_protocol_error(data: bytes) -> None:
    """Text a proxy or another server sent is refused with a clear error, not passed on."""
    with pytest.raises(ProtocolError):
        parse(data)
