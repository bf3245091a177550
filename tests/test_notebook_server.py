"""The README's `jupyter notebook notebooks/frontier_report.ipynb` serves the notebook, locally.

.venv/bin/python -m pytest -q tests/test_notebook_server.py

A real Jupyter server on 127.0.0.1 (a free port, a random token, no browser), asked for the notebook
through its REST API, then ended by its PID's process group. The notebook's cells are run by
tests/test_report.py.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import psutil

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "frontier_report.ipynb"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, token: str | None) -> tuple[int, bytes]:
    headers = {"Authorization": f"token {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_until_up(server: subprocess.Popen, url: str, token: str, log: Path) -> None:
    deadline = time.monotonic() + 120  # a loaded 2-core machine: imports take a while
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the server exited ({server.returncode}):\n{log.read_text()}"
        try:
            if get(url, token)[0] == 200:
                return
        except OSError:  # not listening yet
            pass
        time.sleep(0.5)
    raise AssertionError(f"no answer from {url} in 120 s:\n{log.read_text()}")


def stop(server: subprocess.Popen) -> list[int]:
    """End the server and whatever it started (its own session, signalled by its PID); the PIDs."""
    try:
        pids = [server.pid, *(c.pid for c in psutil.Process(server.pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return [server.pid]
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
    return pids


def test_readme_command_serves_the_notebook_on_localhost(tmp_path):
    port, token = free_port(), secrets.token_hex(16)
    jupyter = Path(sys.executable).parent / "jupyter"
    argv = [str(jupyter), "notebook", "notebooks/frontier_report.ipynb"]  # as the README has it
    argv += ["--no-browser", "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0"]
    argv += [f"--IdentityProvider.token={token}"]
    if os.geteuid() == 0:  # containers and CI often run as root; Jupyter refuses it unasked
        argv.append("--allow-root")
    # Config, data and runtime files (cookie secret, server info) stay in this test's dir.
    env = os.environ | {
        f"JUPYTER_{k}_DIR": str(tmp_path / k) for k in ("CONFIG", "DATA", "RUNTIME")
    }
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(server, f"{base}/api/status", token, log)
        listening = [
            c.laddr
            for c in psutil.Process(server.pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
        assert listening and all(a.ip == "127.0.0.1" for a in listening), listening

        # Given a file, the server serves its folder: the notebook is at the root of /api/contents.
        status, body = get(f"{base}/api/contents/{NOTEBOOK.name}", token)
        assert status == 200, body[:500]
        served = json.loads(body)
        assert served["type"] == "notebook" and served["name"] == NOTEBOOK.name
        on_disk = nbformat.read(NOTEBOOK, as_version=4)
        assert [c["source"] for c in served["content"]["cells"]] == [
            c["source"] for c in on_disk.cells
        ]
        assert get(f"{base}/notebooks/{NOTEBOOK.name}", token)[0] == 200  # the page a user opens
        assert get(f"{base}/api/contents/{NOTEBOOK.name}", None)[0] == 403  # no token, no notebook
    finally:
        pids = stop(server)
    assert server.returncode is not None
    assert not [p for p in pids if psutil.pid_exists(p)], pids
