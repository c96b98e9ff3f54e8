"""What every benchmark process shares: the payload, timestamps, limits, /proc readings."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

from jobcast.server.jobs import Event, Job, JobStatus
from jobcast.server.wire import job_message

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on uvloop where it is installed: every process of the benchmark runs on the same loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def raise_fd_limit() -> None:
    """10k sockets need more than the usual 1024 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_iso(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def progress_like(job: int) -> dict[str, Any]:
    """A message shaped and sized like a jobcast progress update, for the peers to send."""
    return {
        "type": "progress",
        "project_id": "bench",
        "agent": f"pulse{job}",
        "job_id": f"{job:032d}",
        "seq": 0,
        "percent": 42.0,
        "message": "pulse",
        "elapsed_s": 1.234,
        "at": iso_now(),
        "eta_s": None,
        "overdue": False,
    }


def transition_like(seq: int, status: str) -> dict[str, Any]:
    """A jobcast transition message, made by jobcast's own record and encoder, for the peers to send: the same
    fields and size as an ``instant`` job's (started from 127.0.0.1, on an open server), stamped now."""
    job = Job.new("bench", "instant", started_by="127.0.0.1")
    if status != "queued":
        job = job.started_on({"host": socket.gethostname(), "pid": os.getpid()})
    if status == "completed":
        job = job.transition(JobStatus.COMPLETED, result={"project": "bench"})
    message: dict[str, Any] = json.loads(job_message(Event(epoch="bench", seq=seq, job=job)).data)
    return message


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
