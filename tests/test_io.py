"""moa_tune.io: atomic writes that leave the previous file or the whole new one, with ordinary modes."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from moa_tune.io import atomic_dir, atomic_file, write_text


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_and_folders_follow_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        write_text(tmp_path / "a.txt", "x")
        with atomic_file(tmp_path / "b.csv") as tmp:
            with open(tmp, "w") as handle:  # rewritten in place, as pandas does
                handle.write("y")
        with atomic_dir(tmp_path / "folder") as staging:
            (staging / "inside.txt").write_text("z")
    finally:
        os.umask(old)
    for name in ("a.txt", "b.csv"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o777 & ~umask


def test_a_failed_write_leaves_the_previous_file(tmp_path: Path) -> None:
    write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "a.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert (tmp_path / "a.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
