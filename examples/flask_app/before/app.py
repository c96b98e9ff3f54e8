"""BEFORE jobcast: the seed app as its write-up describes it.

A global dict of jobs, a lock, a thread per refresh, and a page that polls
``/financial_agent/processing_status/<id>`` every 3 seconds. Jobs vanish when the
process restarts, two processes would each have their own dict, and the page learns
of progress only by asking. Run it with ``python examples/flask_app/before/app.py``.
"""

from __future__ import annotations

import os
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from threading import Lock, Thread
from typing import Any

from flask import Flask, jsonify, render_template

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # seed_agents, shared with the after version
import seed_agents  # noqa: E402

app = Flask(__name__)

processing_jobs: dict[str, dict[str, Any]] = {}  # Tracks all background jobs
jobs_lock = Lock()  # Thread-safe access
last_results: dict[str, dict[str, Any]] = {}

AGENTS = {
    "financial": lambda project_id: seed_agents.analyse(project_id, seed_agents.FINANCIAL_STEPS),
    "performance": lambda project_id: seed_agents.analyse(project_id, seed_agents.PERFORMANCE_STEPS),
}


def now() -> str:
    return datetime.now(UTC).isoformat()


def run_refresh_background(agent: str, project_id: str, job_id: str) -> None:
    """Runs in a separate thread."""
    key = f"{agent}:{project_id}"
    try:
        result = AGENTS[agent](project_id)
        with jobs_lock:
            processing_jobs[key].update(status="completed", completed_at=now(), result=result)
            last_results[key] = result
    except Exception as e:
        with jobs_lock:
            processing_jobs[key].update(status="failed", failed_at=now(), error=str(e))


@app.route("/<agent>_agent/status/<project_id>", methods=["GET", "POST"])
def start(agent: str, project_id: str) -> Any:
    """Starts background processing, returns immediately."""
    if agent not in AGENTS:
        return jsonify({"error": "unknown agent"}), 404
    key = f"{agent}:{project_id}"
    with jobs_lock:
        job = processing_jobs.get(key)
        if job and job["status"] == "processing":  # duplicate prevention
            return jsonify({"processing": True, "job_id": job["job_id"], "message": "already processing"})
        job_id = str(uuid.uuid4())
        processing_jobs[key] = {"job_id": job_id, "status": "processing", "started_at": now(), "agent": agent}
    Thread(target=run_refresh_background, args=(agent, project_id, job_id), daemon=True).start()
    return jsonify({"processing": True, "job_id": job_id})


@app.get("/<agent>_agent/processing_status/<project_id>")
def processing_status(agent: str, project_id: str) -> Any:
    with jobs_lock:
        job = processing_jobs.get(f"{agent}:{project_id}")
        return jsonify(dict(job) if job else {"status": "not_found"})


@app.get("/<agent>_agent/quick_status/<project_id>")
def quick_status(agent: str, project_id: str) -> Any:
    """Read-only, no processing."""
    with jobs_lock:
        return jsonify({"project_id": project_id, "agent": agent, "data": last_results.get(f"{agent}:{project_id}")})


@app.get("/dashboard/<project_id>")
def dashboard(project_id: str) -> str:
    return render_template("financial_dashboard.html", project_id=project_id)


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")), threaded=True)
