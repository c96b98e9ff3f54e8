"""A full disk when jobs finish: nothing is lost, nothing is left running forever."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.agents import GatedAgent
from tests.disk import small_disk
from tests.support import eventually_async, record_texts, status_is, wait_for_log

pytestmark = pytest.mark.anyio


async def test_final_states_wait_for_the_disk_with_their_slots_held(
    make_app: Callable[..., Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Jobs that finish on a full disk stay running and keep their threads; once space returns, each completes."""
    with small_disk(tmp_path / "disk") as disk:
        # A short lease: the engine used to give up on a final write after one lease, even with no leases to expire.
        async with make_app(store=f"sqlite:///{disk.path / 'jobs.db'}", lease_seconds=0.1) as app:
            jobs = [(await app.http.post(f"/api/projects/p{n}/agents/gated/refresh")).json()["job"] for n in range(3)]
            for job in jobs:
                await app.wait_for(job["job_id"], status_is("running"))
            disk.fill()
            GatedAgent.gate.set()
            await wait_for_log(lambda: record_texts(caplog), "database or disk is full")
            # What is tested is an absence (no giving up): ten old give-up periods pass with the disk still full.
            await anyio.sleep(1.0)

            assert app.engine.busy_threads == 3
            again = await app.http.post("/api/projects/p0/agents/gated/refresh")
            assert again.status_code == 200 and again.json()["job"]["job_id"] == jobs[0]["job_id"]
            for job in jobs:
                assert (await app.http.get(f"/api/jobs/{job['job_id']}")).json()["status"] == "running"
            refused = await app.http.post("/api/projects/fresh/agents/gated/refresh")
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "store_unavailable"
            assert "disk is full" in refused.text and str(tmp_path) not in refused.text  # the path stays in the log

            disk.free()
            for n, job in enumerate(jobs):
                done = await app.wait_for(job["job_id"], status_is("completed", "failed"))
                assert done.status.value == "completed" and done.result == {"project": f"p{n}", "opened": True}
            await eventually_async(lambda: app.engine.busy_threads == 0)  # released just after the write
    assert not any("could not be saved" in record.getMessage() for record in caplog.records)
