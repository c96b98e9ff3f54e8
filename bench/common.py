"""What every benchmark process shares: the payload, timestamps, limits, /proc readings."""

from __future__ import annotations

import asyncio
import os
import resource
import socket
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

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
    """A message shaped and sized like a jobcast transition, for the peers to send."""
    stamp = iso_now()
    return {
        "type": "job",
        "epoch": "bench",
        "seq": seq,
        "project_id": "bench",
        "agent": "instant",
        "job": {
            "job_id": "0" * 32,
            "project_id": "bench",
            "agent": "instant",
            "status": status,
            "created_at": stamp,
            "updated_at": stamp,
            "started_at": stamp,
            "finished_at": None,
            "elapsed_s": 0.0,
            "progress": {"percent": None, "message": None},
            "cancel_requested": False,
            "result": {"project": "bench"} if status == "completed" else None,
            "error": None,
        },
    }


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
