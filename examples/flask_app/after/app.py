"""AFTER jobcast: the same app, its jobs run and pushed by jobcast.

- The jobs dict, the lock and the threads are gone: jobcast runs the agents
  (``seed_agents.py``) in its worker threads, keeps the jobs in its store, and pushes
  every state change and progress tick to the page.
- The backend signs users in as before, mints each a short jobcast token with PyJWT
  (no jobcast import for that), and starts refreshes with jobcast's synchronous client.
- The page imports ``jobcast.js`` from the jobcast server and shows live progress.

Run jobcast, then this app::

    export JOBCAST_SECRET="$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
    jobcast serve --port 8765 --app-dir examples/flask_app \\
        --agent seed_agents:FinancialAgent --agent seed_agents:PerformanceAgent \\
        --allowed-origins http://127.0.0.1:5000
    JOBCAST_URL=http://127.0.0.1:8765 python examples/flask_app/after/app.py

and open http://127.0.0.1:5000/, sign in as alice, and open acme's dashboard.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jwt
from flask import Flask, abort, jsonify, redirect, render_template, request, session, url_for

from jobcast.client import Client, ClientError, ServerRefused

JOBCAST_URL = os.environ.get("JOBCAST_URL", "http://127.0.0.1:8765").rstrip("/")
JOBCAST_SECRET = os.environ["JOBCAST_SECRET"]  # the same secret jobcast serve has
TOKEN_SECONDS = float(os.environ.get("JOBCAST_TOKEN_SECONDS", "600"))

#: who may see which project: your app's own rule (a table, a database, an identity service)
MEMBERS = {"acme": {"alice", "bob"}, "globex": {"bob"}}

app = Flask(__name__)
app.secret_key = os.environ.get("FLASK_SECRET_KEY") or os.urandom(32)


def jobcast_token(user: str, project_id: str) -> str:
    """A short jobcast token for this user and project, minted with PyJWT alone."""
    now = int(time.time())
    claims = {"sub": user, "iat": now, "exp": now + TOKEN_SECONDS,
              "jobcast": {"projects": [project_id], "rights": ["read", "run"]}}  # fmt: skip
    return jwt.encode(claims, JOBCAST_SECRET, algorithm="HS256")


def member(project_id: str) -> str:
    """The signed-in user, if they may see the project: 401 when signed out, 403 when not a member."""
    user = session.get("user")
    if not user:
        abort(401)
    if user not in MEMBERS.get(project_id, ()):
        abort(403)
    return str(user)


@app.get("/")
def home() -> Any:
    return redirect(url_for("login") if "user" not in session else url_for("dashboard", project_id="acme"))


@app.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if request.method == "POST":
        session["user"] = request.form["user"].strip()
        return redirect(url_for("dashboard", project_id="acme"))
    return render_template("login.html")


@app.get("/dashboard/<project_id>")
def dashboard(project_id: str) -> str:
    user = member(project_id)
    return render_template("financial_dashboard.html", project_id=project_id, user=user, jobcast_url=JOBCAST_URL)


@app.get("/jobcast-token/<project_id>")
def token(project_id: str) -> Any:
    """The page's getToken(): a fresh token whenever jobcast.js asks, for as long as the session lasts."""
    return (
        jobcast_token(member(project_id), project_id),
        200,
        {"content-type": "text/plain", "cache-control": "no-store"},
    )


@app.post("/<agent>_agent/status/<project_id>")
def start(agent: str, project_id: str) -> Any:
    """Starts a refresh on jobcast, on behalf of the signed-in user; jobcast pushes the rest to the page."""
    user = member(project_id)
    try:
        with Client(JOBCAST_URL, token=jobcast_token(user, project_id)) as jobcast:
            started = jobcast.refresh(project_id, agent)
    except ServerRefused as refused:  # an unknown agent, a full queue, a rate limit: the server's code and words
        return jsonify({"error": {"code": refused.code, "message": str(refused)}}), refused.status or 502
    except ClientError as failed:  # jobcast is unreachable
        return jsonify({"error": {"code": "jobcast_unavailable", "message": str(failed)}}), 503
    return jsonify({"processing": True, "job_id": started.job["job_id"], "deduplicated": started.deduplicated})


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")), threaded=True)
