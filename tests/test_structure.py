"""Rules of the code's shape, read from the source with ``ast`` (so a new module is covered at once).

- No module of the package or the benches imports another module's private (underscore) names:
  what is shared is public, with one owner (the Ray session: ``moa_tune.ray_session``; test and
  bench fixtures: ``moa_tune.testing``).
- Ray is imported only by the sweep layer: the Ray session, the sweep engine and the collector.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(REPO / "moa_tune").rglob("*.py"), *(REPO / "bench").glob("*.py")])
#: the modules that may import Ray (the sweep layer); everything else runs without it
RAY_LAYER = {"moa_tune/ray_session.py", "moa_tune/sweep.py", "moa_tune/collect.py"}


def _module_of(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) of every import in ``path``."""
    package = _module_of(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_of(path)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.append((base, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found.extend((a.name, [], node.lineno) for a in node.names)
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_imports_another_modules_private_names(path: Path) -> None:
    private = [f"{module}.{name} (line {line})" for module, names, line in _imports(path)
               if module.startswith("moa_tune") and module != _module_of(path)
               for name in names if name.startswith("_") and not name.startswith("__")]
    assert not private, f"{path.relative_to(REPO)} imports private names: {private}"


@pytest.mark.parametrize("path", [p for p in SOURCES if p.parts[-2] != "bench"], ids=lambda p: str(p.relative_to(REPO)))
def test_only_the_sweep_layer_imports_ray(path: Path) -> None:
    ray = [line for module, _, line in _imports(path) if module == "ray" or module.startswith("ray.")]
    if str(path.relative_to(REPO)) not in RAY_LAYER:
        assert not ray, f"{path.relative_to(REPO)} imports Ray (lines {ray}); only {sorted(RAY_LAYER)} may"


def test_the_rules_see_what_they_forbid(tmp_path: Path) -> None:
    """The reader resolves relative imports (a rule that reads nothing would pass everything)."""
    module = REPO / "moa_tune" / "collect.py"
    assert ("moa_tune.ray_session", ["DASHBOARD_HOST", "quiet", "shutdown", "start_or_join"]) in [
        (m, n) for m, n, _ in _imports(module)]
    assert any(m == "ray" for m, _, _ in _imports(module))
