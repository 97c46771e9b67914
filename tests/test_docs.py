"""The documentation shows what the benches measured and links what exists.

docs/benchmarks.md and the README's headline figures are generated from results/bench/*.md by
bench/render_docs.py; a page edited by hand, or a bench rerun without rendering, fails here.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_generated_pages_match_the_saved_figures() -> None:
    done = subprocess.run([sys.executable, str(REPO / "bench" / "render_docs.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_include_names_saved_figures_and_every_link_resolves() -> None:
    template = (REPO / "docs" / "benchmarks.in.md").read_text()
    includes = re.findall(r"<!-- include (\S+) -->", template)
    assert includes and all((REPO / path).is_file() for path in includes), includes
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)\)", page.read_text()):
            if not re.match(r"[a-z]+://", target):
                assert (page.parent / target).exists(), f"{page.relative_to(REPO)}: broken link {target}"


def test_the_readme_starts_with_the_two_commands() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    blocks = [i for i, line in enumerate(lines[:12]) if line.startswith("```")]
    assert lines[0] == "# moa-tune" and len(blocks) == 4, lines[:12]
    first, second = lines[blocks[0] + 1], lines[blocks[2] + 1]
    assert "pip install torch==2.13.0" in first and "moa-tune run" in first
    assert "pip install torch==2.13.0" in second and "pytest" in second
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line.startswith("python3 -m venv")]
    assert [line.replace(" -q", "") for line in ci] == [second]  # .ci/run runs the README's test command
