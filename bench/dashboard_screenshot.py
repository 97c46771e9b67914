"""Screenshot of the Ray dashboard while ``moa-tune sweep`` runs, rendered by headless Chromium.

Starts a small sweep with ``moa-tune sweep`` in a subprocess (its own local Ray, dashboard on
127.0.0.1, token authentication on, in a temporary HOME so your own ``~/.ray/auth_token`` is not
touched), waits until the dashboard answers and lists the sweep's driver as a running job, and
saves a PNG of the page (``#/jobs`` by default: a driver started by ``moa-tune sweep`` is listed
there as a job, its command line as the entrypoint). Then it lets the sweep finish.

The dashboard asks for the token. Ray 2.60 accepts it as ``Authorization: Bearer``,
``X-Ray-Authorization: Bearer`` or the cookie ``ray-authentication-token`` (what its own login
form sets, via ``POST /api/authenticate``). Chromium's command line cannot set a header or a
cookie, so the browser first opens a one-shot local page on another loopback port that sets the
cookie and redirects to the dashboard: cookies are per host, not per port, so the dashboard gets it.

Usage: python bench/dashboard_screenshot.py [--page jobs|overview|cluster|actors]
           [--out results/bench/dashboard.png] [--size 1400,900]
Exits 2 when no chromium, chromium-browser or google-chrome binary is on PATH
(Debian: ``apt-get install chromium``).
"""
from __future__ import annotations

import argparse
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
COOKIE = "ray-authentication-token"  # ray._private.authentication.authentication_constants
SWEEP = """\
name: dashboard
data: {synth: tiny, seed: 0}
folds: {n_splits: 3}
fixed: {train.epochs: 8, train.early_stopping: 0, train.batch_size: 64}
asha: {grace_period: 3}
max_concurrent: 2
stages:
  - {stage: direct, families: [linear, mlp], trials: 4}
"""


def find_browser() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def moa_tune() -> list[str]:
    script = Path(sys.executable).with_name("moa-tune")
    return [str(script)] if script.exists() else [sys.executable, "-m", "moa_tune.cli"]


def get_json(url: str, token: str) -> object | None:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


class Lines:
    """The sweep's output, read in a thread (kept for the error message, searched for the URL)."""

    def __init__(self, stream) -> None:  # noqa: ANN001
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:  # noqa: ANN001
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def find(self, pattern: str) -> re.Match | None:
        return next((m for m in map(re.compile(pattern).search, list(self.lines)) if m), None)

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.lines[-n:])


def cookie_redirect(token: str, target: str) -> tuple[http.server.HTTPServer, str]:
    """A loopback server whose every answer sets the token cookie and redirects to ``target``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(302)
            self.send_header("Set-Cookie", f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax")
            self.send_header("Location", target)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def screenshot(browser: str, url: str, png: Path, size: str, work: Path) -> None:
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    command = [browser, "--headless=new", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
               "--virtual-time-budget=15000", f"--user-data-dir={work / 'chromium-profile'}",
               f"--screenshot={png.resolve()}", f"--window-size={size}", url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if not png.is_file():
        raise SystemExit(f"{browser} wrote no screenshot (exit {done.returncode}):\n{done.stderr[-2000:]}")


def session_pids(sid: int) -> list[int]:
    """Processes of the session the sweep was started in (its Ray daemons and workers keep it)."""
    pids = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def stop(driver: subprocess.Popen, timeout: float) -> None:
    """Ctrl-C the sweep if it still runs (it shuts its Ray down), then kill what is left of its session, by id."""
    if driver.poll() is None:
        driver.send_signal(signal.SIGINT)
        try:
            driver.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    for pid in session_pids(driver.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    driver.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--page", default="jobs", help="dashboard page after #/ (jobs, overview, cluster, actors)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "dashboard.png")
    parser.add_argument("--size", default="1400,900", help="browser window WIDTH,HEIGHT in pixels")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for each step")
    args = parser.parse_args(argv)

    browser = find_browser()
    if browser is None:
        print(f"no headless browser found (looked for {', '.join(BROWSERS)} on PATH); "
              "install one, e.g. `apt-get install chromium`", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="moa-dash-") as tmp:
        work = Path(tmp)
        (work / "home").mkdir()
        (work / "sweep.yaml").write_text(SWEEP)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(HOME=str(work / "home"), PYTHONUNBUFFERED="1")
        driver = subprocess.Popen([*moa_tune(), "sweep", "--config", str(work / "sweep.yaml"), "--results",
                                   str(work / "results"), "--num-cpus", "2"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True)
        output = Lines(driver.stdout)
        finished = False
        try:
            deadline = time.time() + args.timeout
            while (found := output.find(r"Ray dashboard: (http://\S+)")) is None:
                if driver.poll() is not None or time.time() > deadline:
                    raise SystemExit("the sweep printed no dashboard URL:\n" + output.tail())
                time.sleep(0.5)
            base = found.group(1).rstrip("/")
            token = (work / "home" / ".ray" / "auth_token").read_text().strip()
            # wait until the dashboard lists the sweep's driver as a running job and trials have started
            while True:
                jobs = get_json(f"{base}/api/jobs/", token) or []
                running = [j for j in jobs if isinstance(j, dict) and j.get("status") == "RUNNING"]
                if running and output.find(r"\] \d+ trials, up to"):
                    break
                if driver.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"the dashboard at {base} never listed a running job:\n" + output.tail())
                time.sleep(1)
            time.sleep(5)  # let the trials' actors start and report
            server, login = cookie_redirect(token, f"{base}/#/{args.page}")
            try:
                screenshot(browser, login, args.out, args.size, work)
            finally:
                server.shutdown()
            print(f"{args.out}  ({base}/#/{args.page}, {len(running)} running job(s): "
                  f"{running[0].get('entrypoint', '')!r})")
            driver.wait(timeout=max(1.0, deadline - time.time()))
            finished = True
        finally:
            stop(driver, timeout=60)
        if finished and driver.returncode != 0:
            print(f"the sweep ended with exit code {driver.returncode}:\n{output.tail()}", file=sys.stderr)
            return 1
        print(output.find(r"\d+ trials: .*").group(0) if output.find(r"\d+ trials: .*") else output.tail(5))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
