"""What ``pip install`` puts on a user's machine: one package, ``jobcast``, that runs beside any project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import JobcastServer
from tests.support import WAIT

ROOT = Path(__file__).resolve().parent.parent

#: A Flask project's own modules, named as generically as jobcast's folders.
FLASK_PROJECT = {
    "server.py": "raise SystemExit('this is the Flask app, not jobcast')\n",
    "agents/__init__.py": "Agent = 'the Flask app's own agents package'\n",
    "myplugin.py": (
        "from jobcast.agents import Cancelled\n\n\n"
        "class MyAgent:\n"
        "    name = 'mine'\n\n"
        "    def refresh(self, project_id, ctx):\n"
        "        if ctx.cancelled:\n"
        "            raise Cancelled\n"
        "        return {'from': 'the project folder'}\n"
    ),
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel .``, as a user or a release builds it."""
    out = tmp_path_factory.mktemp("wheel")
    # From a clean copy: setuptools reuses a checkout's build/ folder, where modules since deleted linger.
    source = tmp_path_factory.mktemp("source") / "jobcast"
    junk = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "*.db*")
    shutil.copytree(ROOT, source, symlinks=True, ignore=junk)
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    [built] = out.glob("jobcast-*.whl")
    return built


def test_the_wheel_holds_one_package_with_its_types_and_dashboard(wheel: Path) -> None:
    """Only jobcast and its dist-info, no tests or bench; py.typed and every dashboard file are inside."""
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"jobcast", wheel.name.split("-py3")[0] + ".dist-info"}
    for needed in (
        "jobcast/py.typed",
        "jobcast/cli.py",
        "jobcast/agents/__init__.py",
        "jobcast/client/cli.py",
        "jobcast/server/app.py",
        "jobcast/server/web/project.html",
        "jobcast/server/web/favicon.svg",
        "jobcast/server/web/static/app.css",
        "jobcast/server/web/static/js/project.js",
    ):
        assert needed in names
    assert not any(name.startswith(("tests/", "bench/", "server/", "client/", "agents/")) for name in names)
    sources = {
        str(Path(folder, file).relative_to(ROOT))
        for folder, _, files in os.walk(ROOT / "jobcast", followlinks=True)
        for file in files
        if file.endswith(".py")
    }
    assert {name for name in names if name.endswith(".py")} == sources  # every module, and only those


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with the wheel installed (not editable); its dependencies come from this venv's site-packages."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=WAIT * 6)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    subprocess.run([*pip, "install", "-q", "--no-deps", str(wheel)], check=True, capture_output=True, timeout=120)
    yield venv


def test_the_installed_wheel_serves_the_dashboard_beside_a_flask_project(installed: Path, tmp_path: Path) -> None:
    """In a folder with its own server.py and agents/, the installed jobcast serves a plugin from that folder
    and the dashboard with its scripts and styles."""
    for name, text in FLASK_PROJECT.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    script = installed / "bin" / "jobcast"
    assert script.exists()
    site = sysconfig.get_paths()["purelib"]  # this venv's: starlette, uvicorn and the rest, but no jobcast package
    env = {"PYTHONPATH": site, "PATH": f"{installed / 'bin'}:{os.environ['PATH']}"}
    where = subprocess.run(
        [str(installed / "bin" / "python"), "-c", "import jobcast; print(jobcast.__file__)"],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert where.stdout.strip().startswith(str(installed))  # the wheel's copy, not this checkout
    args = ["--store", "memory://", "--agent", "myplugin:MyAgent", "--agent", "jobcast.agents.builtin:FinancialAgent"]
    server = JobcastServer(args, tmp_path / "server.log", env=env, cwd=tmp_path, command=[str(script)])
    try:
        server.wait_ready()
        agents = httpx.get(f"{server.url}/api/agents").json()["agents"]
        assert [agent["name"] for agent in agents] == ["mine", "financial"]
        for path, kind in [
            ("/projects/acme", "text/html"),
            ("/static/js/project.js", "text/javascript"),
            ("/static/app.css", "text/css"),
            ("/favicon.ico", "image/svg+xml"),
        ]:
            response = httpx.get(f"{server.url}{path}")
            assert response.status_code == 200 and response.headers["content-type"].startswith(kind), path
        assert str(ROOT) not in httpx.get(f"{server.url}/api/agents").text
    finally:
        server.stop()
    assert "Traceback" not in server.log
