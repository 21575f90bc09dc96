"""Opening an artifact checks its files against manifest.json; checksums are cached per file
state in a user cache, so that a second open hashes nothing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import miir.data.artifact as artifact_mod
from miir.data.artifact import Artifact, verified_cache_path
from miir.errors import ConfigError, DataError

HOUR_NS = 3600 * 10**9


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("MIIR_CACHE_DIR", str(d))
    return d


@pytest.fixture
def art(planted_artifact: Path, tmp_path: Path) -> Path:
    """A private copy whose files were last modified an hour ago (older than the racy window,
    as an artifact opened for training usually is)."""
    out = tmp_path / "art"
    shutil.copytree(planted_artifact, out)
    for p in out.rglob("*"):
        if p.is_file():
            st = p.stat()
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns - HOUR_NS))
    return out


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Records every file the verification hashes."""
    calls: list[Path] = []
    real = artifact_mod.file_sha256

    def counting(path: str | Path) -> str:
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(artifact_mod, "file_sha256", counting)
    return calls


def n_files(path: Path) -> int:
    return len(json.loads((path / "manifest.json").read_text(encoding="utf-8"))["files"])


def flip_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))


def test_intact_artifact_opens_and_second_open_hashes_nothing(
    art: Path, hashes: list[Path]
) -> None:
    Artifact(art)
    assert len(hashes) == n_files(art)
    assert verified_cache_path().exists()
    hashes.clear()
    a = Artifact(art)
    assert hashes == []
    assert a.split("valid")[0].shape == (a.n_users,)


def test_changed_byte_is_caught_even_after_a_cached_open(art: Path, hashes: list[Path]) -> None:
    Artifact(art)  # fills the cache
    target = art / "split" / "valid_target.npy"
    size = target.stat().st_size
    flip_byte(target)
    assert target.stat().st_size == size
    with pytest.raises(DataError, match="checksum mismatch") as err:
        Artifact(art)
    assert err.value.file == str(target)
    assert "miir prepare" in str(err.value)
    Artifact(art, verify="off")  # hashes skipped: opens
    Artifact(art, verify=False)


def test_restored_mtime_does_not_hide_a_change(art: Path) -> None:
    Artifact(art)
    target = art / "split" / "valid_target.npy"
    st = target.stat()
    flip_byte(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as cached
    with pytest.raises(DataError, match="checksum mismatch"):
        Artifact(art)


@pytest.mark.parametrize("verify", ["auto", "full", "off"])
def test_missing_file_is_named(art: Path, verify: str) -> None:
    Artifact(art)
    target = art / "split" / "valid_target.npy"
    target.unlink()
    with pytest.raises(DataError, match="missing file") as err:
        Artifact(art, verify=verify)  # type: ignore[arg-type]
    assert err.value.file == str(target)


def test_a_damaged_manifest_is_named(art: Path) -> None:
    """A truncated, non-object or incomplete manifest.json is a DataError naming it, never a
    bare JSONDecodeError or KeyError."""
    manifest_path = art / "manifest.json"
    text = manifest_path.read_text(encoding="utf-8")
    manifest = json.loads(text)
    del manifest["files"]
    for damaged, reason in (
        (text[: len(text) // 2], "damaged manifest"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps(manifest), "'files'"),
    ):
        manifest_path.write_text(damaged, encoding="utf-8")
        with pytest.raises(DataError, match=reason) as err:
            Artifact(art)
        assert err.value.file == str(manifest_path) and "miir prepare" in str(err.value)
    manifest_path.write_bytes(b"\xff\xfe{")
    with pytest.raises(DataError, match="damaged manifest"):
        Artifact(art)
    manifest_path.write_text(text, encoding="utf-8")
    Artifact(art)


def test_recorded_size_is_checked(art: Path) -> None:
    manifest_path = art / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    rel = "split/valid_target.npy"
    size = (art / rel).stat().st_size
    manifest["files"][rel] = {"sha256": manifest["files"][rel], "bytes": size + 1}
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(DataError, match="size mismatch") as err:
        Artifact(art, verify="off")
    assert err.value.file == str(art / rel)
    manifest["files"][rel]["bytes"] = size
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    Artifact(art)


def test_corrupt_cache_is_tolerated_and_rewritten(art: Path, hashes: list[Path]) -> None:
    cache = verified_cache_path()
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json", encoding="utf-8")
    Artifact(art)
    assert len(hashes) == n_files(art)
    hashes.clear()
    Artifact(art)
    assert hashes == []


def test_unwritable_cache_is_tolerated(
    art: Path, hashes: list[Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder", encoding="utf-8")
    monkeypatch.setenv("MIIR_CACHE_DIR", str(blocker / "cache"))
    Artifact(art)
    Artifact(art)
    assert len(hashes) == 2 * n_files(art)  # nothing cached: hashed every time


def test_full_rehashes_and_true_means_full(art: Path, hashes: list[Path]) -> None:
    Artifact(art)
    hashes.clear()
    Artifact(art, verify="full")
    assert len(hashes) == n_files(art)
    hashes.clear()
    Artifact(art, verify=True)
    assert len(hashes) == n_files(art)


def test_freshly_written_files_are_hashed_but_not_cached(
    planted_artifact: Path, tmp_path: Path, hashes: list[Path]
) -> None:
    out = tmp_path / "fresh"
    shutil.copytree(planted_artifact, out, copy_function=shutil.copyfile)  # mtime = now
    Artifact(out)
    Artifact(out)
    assert len(hashes) == 2 * n_files(out)


def test_read_only_artifact_opens(art: Path, hashes: list[Path]) -> None:
    for p in [art, *art.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        Artifact(art)
        hashes.clear()
        Artifact(art)
        assert hashes == []
    finally:
        for p in [art, *art.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)


def test_unknown_verify_value(art: Path) -> None:
    with pytest.raises(ConfigError, match="verify"):
        Artifact(art, verify="sometimes")  # type: ignore[arg-type]
