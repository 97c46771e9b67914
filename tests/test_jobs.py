"""``ray job submit`` of ``moa-tune sweep`` to a real ``ray start --head`` with token authentication.

The dashboard listens on loopback only (``--node-ip-address 127.0.0.1 --dashboard-host 127.0.0.1``) and
has a token (``ray get-auth-token --generate`` in a temporary HOME, then ``RAY_AUTH_MODE=token``:
``ray start`` turns auth on only when a token exists). The job runs in the cluster's Python
environment, where moa_tune is installed, so ``--working-dir`` carries only the sweep file.

The head is stopped by process id, never with ``ray stop``: that kills every Ray process on the
machine by name, other users' clusters included (and resets /tmp/ray/ray_current_cluster). ``ray
start`` runs in a session of its own, and every process of this cluster (daemons, workers, the job's
driver) keeps that session id; its ``--temp-dir`` is private, so no other ``ray.init()`` joins it.

Only the dashboard (and with it the job API) is bound to 127.0.0.1 by these flags: measured with
Ray 2.60, the GCS and raylet still listen on every interface (``::``), the dashboard agent and the
Ray client server on the machine's address too. They are Ray's RPC ports, not the HTTP API.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

BIN = Path(sys.executable).parent
SWEEP = {"name": "j", "data": {"synth": "tiny", "seed": 0}, "folds": {"n_splits": 3},
         "fixed": {"train.epochs": 2, "train.early_stopping": 0},
         "stages": [{"stage": "direct", "families": ["linear"], "trials": 2}]}


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on loopback right now (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def non_loopback_ipv4() -> str | None:
    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    return None


def session_processes(sid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and os.getsid(proc.pid) == sid:
                found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass
    return found


def stop_session(sid: int) -> None:
    """SIGTERM, then SIGKILL, every process of the session ``ray start`` opened (ours only)."""
    procs = session_processes(sid)
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for proc in alive + session_processes(sid):
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


def http_status(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def head(tmp_path: Path):
    """A loopback-only head with token auth in a temporary HOME: (env for clients, dashboard URL, ports)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="token",
               PYTHONUNBUFFERED="1")
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env, check=True, capture_output=True,
                   timeout=120)
    token = (home / ".ray" / "auth_token").read_text().strip()
    assert token
    # its own temp dir: `ray start` records its address in <temp-dir>/ray_current_cluster, and a plain
    # ray.init() anywhere on this machine would join a head recorded in the default /tmp/ray (a short
    # path: Ray's socket paths must stay under 108 characters)
    temp_dir = tempfile.mkdtemp(prefix="moa-ray-")
    (gcs, dashboard, agent_http, agent_grpc, runtime_env, client, metrics, node_manager,
     object_manager) = free_ports(9)
    command = [str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
               "--num-cpus", "2", "--port", str(gcs), "--dashboard-port", str(dashboard),
               "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
               "--runtime-env-agent-port", str(runtime_env), "--ray-client-server-port", str(client),
               "--metrics-export-port", str(metrics), "--node-manager-port", str(node_manager),
               "--object-manager-port", str(object_manager), "--temp-dir", temp_dir, "--disable-usage-stats"]
    starter = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    sid = starter.pid
    try:
        log, _ = starter.communicate(timeout=300)
        assert starter.returncode == 0, log[-3000:]
        url = f"http://127.0.0.1:{dashboard}"
        deadline = time.time() + 120
        while http_status(f"{url}/api/gcs_healthz") != 200:
            assert time.time() < deadline, "the dashboard never answered"
            time.sleep(1)
        yield env, url, token, dashboard
    finally:
        if starter.poll() is None:
            starter.kill()
        stop_session(sid)
        left = session_processes(sid)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"processes of the head survived: {left}"


def ray_cli(env: dict[str, str], *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_job_submit_of_a_sweep_with_token_auth_on_loopback(head, tmp_path: Path) -> None:
    env, url, token, dashboard_port = head

    # the job API is the dashboard's: without the token it refuses, a wrong token is forbidden
    assert http_status(f"{url}/api/jobs/") == 401
    assert http_status(f"{url}/api/jobs/", {"Authorization": "Bearer not-the-token"}) == 403
    assert http_status(f"{url}/api/jobs/", {"Authorization": f"Bearer {token}"}) == 200
    # a client without RAY_AUTH_MODE=token does not send the token, even though ~/.ray/auth_token holds it
    bare = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
    refused = ray_cli(bare, "job", "list", "--address", url)
    assert refused.returncode != 0
    assert "Missing authentication token" in refused.stdout + refused.stderr, refused.stdout + refused.stderr

    # the dashboard (and with it the job API) listens on loopback only
    listening = [c for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == dashboard_port]
    assert listening and {c.laddr.ip for c in listening} == {"127.0.0.1"}, listening
    outside = non_loopback_ipv4()
    if outside is not None:
        with pytest.raises(OSError):
            socket.create_connection((outside, dashboard_port), timeout=5).close()

    job_dir = tmp_path / "job"  # the working dir travels to the cluster: only the sweep file
    job_dir.mkdir()
    (job_dir / "j.yaml").write_text(yaml.safe_dump(SWEEP, sort_keys=False))
    results = (tmp_path / "results").resolve()
    submission = "moa-tune-test-sweep"
    submitted = ray_cli(env, "job", "submit", "--address", url, "--working-dir", str(job_dir),
                        "--submission-id", submission, "--no-wait", "--",
                        "moa-tune", "sweep", "--config", "j.yaml", "--address", "auto", "--results", str(results),
                        "--name", "j")
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]

    auth = {"Authorization": f"Bearer {token}"}
    deadline = time.time() + 900
    info: dict = {}
    while time.time() < deadline:
        with urllib.request.urlopen(urllib.request.Request(f"{url}/api/jobs/{submission}", headers=auth),
                                    timeout=30) as response:
            info = json.loads(response.read())
        if info["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(5)
    logs = ray_cli(env, "job", "logs", submission, "--address", url, timeout=120)
    assert info.get("status") == "SUCCEEDED", f"job: {info}\n{logs.stdout[-4000:]}{logs.stderr[-2000:]}"
    assert info["entrypoint"].startswith("moa-tune sweep")
    status = ray_cli(env, "job", "status", submission, "--address", url, timeout=120)
    assert status.returncode == 0 and "succeeded" in status.stdout + status.stderr, status.stdout + status.stderr
    assert "2 trials:" in logs.stdout, logs.stdout[-3000:]
    assert "Ray dashboard" not in logs.stdout  # it joined the cluster: no local Ray of its own

    out = results / "j"
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 2 and trials.trial_id.is_unique, trials
    assert set(trials.state) <= {"completed", "pruned"} and (trials.state == "completed").any(), trials
    best = out / "direct" / "linear" / "best"
    assert (best / "oof.npy").is_file() and (best / "test.npy").is_file() and (best / "predictions.json").is_file()
