"""The benchmark suite runs end to end at toy sizes, so its code cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(200)
def test_python_m_bench_smoke_writes_a_report_and_a_plot(tmp_path: Path) -> None:
    """python -m bench --smoke runs every scenario against every server and writes the table and plot."""
    out = tmp_path / "benchmarks.md"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = out.read_text()
    for heading in (
        "## Targets",
        "## Fan-out",
        "## Push against polling",
        "## Responsiveness",
        "## Rate sweep",
        "## Scheduling delay",
    ):
        assert heading in report
    for server in ("jobcast", "bare websockets", "python-socketio"):
        assert server in report
    assert "| **no** |" not in report  # every subscriber got every message, in order
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
