"""Folder replacement (:func:`miir.atomic.replace_dir`), shared by preparation, derived
artifacts, checkpoints and exports: a finished folder replaces the old one, and a failed final
rename puts the old one back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import miir.atomic as atomic
from miir.atomic import replace_dir


def folder(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "f.txt").write_text(text, encoding="utf-8")
    return path


def test_a_new_folder_is_moved_and_an_old_one_replaced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    replace_dir(folder(tmp_path / ".out.tmp-1", "first"), out)
    replace_dir(folder(tmp_path / ".out.tmp-2", "second"), out)
    assert (out / "f.txt").read_text(encoding="utf-8") == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .tmp-, no .old-


def test_a_failed_final_rename_keeps_the_old_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = folder(tmp_path / "out", "old")
    tmp = folder(tmp_path / ".out.tmp-1", "new")
    real = os.replace

    def failing(src: str | Path, dst: str | Path) -> None:
        if Path(src) == tmp:
            raise OSError("disk gone")
        real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", failing)
    with pytest.raises(OSError, match="disk gone"):
        replace_dir(tmp, out)
    assert (out / "f.txt").read_text(encoding="utf-8") == "old"
    assert not list(tmp_path.glob(".out.old-*"))
