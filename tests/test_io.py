"""Atomic writes: a failure half-way leaves the previous version whole and no temporary behind."""

from __future__ import annotations

import pytest

from sage.io import atomic_folder, atomic_path, write_atomic


def test_write_atomic_replaces_whole_and_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "sub" / "table.md"
    write_atomic(path, "one\n")
    write_atomic(path, b"two\n")
    assert path.read_text() == "two\n"
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "two\n" and sorted(p.name for p in path.parent.iterdir()) == ["table.md"]


def test_atomic_folder_swaps_in_a_complete_folder_only(tmp_path):
    out = tmp_path / "model"
    with atomic_folder(out) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(RuntimeError), atomic_folder(out) as tmp:
        (tmp / "b.txt").write_text("2")
        raise RuntimeError("interrupted")
    assert [p.name for p in out.iterdir()] == ["a.txt"]
    with atomic_folder(out) as tmp:  # replace=True: the new folder wins
        (tmp / "c.txt").write_text("3")
    assert [p.name for p in out.iterdir()] == ["c.txt"] and oct(out.stat().st_mode)[-3:] == "755"
    with atomic_folder(out, replace=False) as tmp:  # a cache: the folder already published wins
        (tmp / "d.txt").write_text("4")
    assert [p.name for p in out.iterdir()] == ["c.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
