"""Screenshot of a sweep report, rendered by headless Chromium.

Writes ``report.html`` for a sweep folder (``moa_tune.report.write_report``) and saves a PNG of how a
browser shows it, to look at the layout without opening a browser. Without a folder argument it
builds the same small fake sweep as the tests (``moa_tune.testing.demo_sweep``) in a temporary folder.

Usage: python bench/report_screenshot.py [SWEEP_DIR] [--out results/bench/report.png] [--size 1400,3000]
Exits 2 when no chromium, chromium-browser or google-chrome binary is on PATH
(Debian: ``apt-get install chromium``).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moa_tune.report import write_report  # noqa: E402
from moa_tune.testing import demo_sweep  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def screenshot(browser: str, page: Path, png: Path, size: str, work: Path) -> None:
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    command = [browser, "--headless=new", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
               f"--user-data-dir={work / 'chromium-profile'}", f"--screenshot={png.resolve()}",
               f"--window-size={size}", page.resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if not png.is_file():
        raise SystemExit(f"{browser} wrote no screenshot (exit {done.returncode}):\n{done.stderr[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", nargs="?", type=Path, help="a sweep folder (default: a fake demo sweep)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "report.png")
    parser.add_argument("--size", default="1400,3000", help="browser window WIDTH,HEIGHT in pixels")
    args = parser.parse_args(argv)

    browser = find_browser()
    if browser is None:
        print(f"no headless browser found (looked for {', '.join(BROWSERS)} on PATH); "
              "install one, e.g. `apt-get install chromium`", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="moa-report-") as tmp:
        work = Path(tmp)
        folder = args.sweep_dir if args.sweep_dir is not None else demo_sweep(work / "demo-sweep")
        page = write_report(folder)
        screenshot(browser, page, args.out, args.size, work)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
