"""--precision auto: bf16 only where the hardware computes it natively."""

from __future__ import annotations

from pathlib import Path

import pytest

from miir import runtime
from miir.errors import ConfigError


@pytest.fixture
def x86(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime.platform, "machine", lambda: "x86_64")


def set_flags(monkeypatch: pytest.MonkeyPatch, *flags: str) -> None:
    monkeypatch.setattr(runtime, "cpu_flags", lambda: set(flags))


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_auto_picks_bf16_with_native_support(
    x86: None, monkeypatch: pytest.MonkeyPatch, flag: str
) -> None:
    set_flags(monkeypatch, "avx2", "avx512f", flag)
    assert runtime.native_bf16()
    assert runtime.resolve_precision("auto") == "bf16"


def test_auto_picks_float32_without_native_support(
    x86: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_flags(monkeypatch, "avx2", "avx512f", "fma")
    assert not runtime.native_bf16()
    assert runtime.resolve_precision("auto") == "32-true"
    set_flags(monkeypatch)  # no /proc/cpuinfo (macOS)
    assert runtime.resolve_precision("auto", "cpu") == "32-true"


def test_aarch64_reads_the_bf16_feature(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime.platform, "machine", lambda: "aarch64")
    set_flags(monkeypatch, "fp", "asimd", "bf16")
    assert runtime.resolve_precision("auto") == "bf16"
    set_flags(monkeypatch, "fp", "asimd")
    assert runtime.resolve_precision("auto") == "32-true"


def test_explicit_values_pass_through(x86: None, monkeypatch: pytest.MonkeyPatch) -> None:
    set_flags(monkeypatch)
    assert runtime.resolve_precision("bf16") == "bf16"
    assert runtime.resolve_precision("32-true") == "32-true"


@pytest.mark.parametrize("bad", ["16-mixed", "fp32", "BF16", ""])
def test_unknown_precision_lists_the_allowed_values(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        runtime.resolve_precision(bad)
    for allowed in ("'auto'", "'32-true'", "'bf16'"):
        assert allowed in str(err.value)


def test_cuda_asks_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert runtime.resolve_precision("auto", "cuda") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert runtime.resolve_precision("auto", "cuda") == "bf16"


def test_cpu_flags_parses_cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 avx512_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu avx2 avx512_bf16\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(runtime, "_CPUINFO", str(info))
    assert runtime.cpu_flags() == {"fpu", "avx2", "avx512_bf16"}
    assert runtime.machine_info()["cpu"] == "Test CPU"
    monkeypatch.setattr(runtime, "_CPUINFO", str(tmp_path / "absent"))
    assert runtime.cpu_flags() == set()


def test_machine_info_keys(x86: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    set_flags(monkeypatch, "avx2", "fma", "sse4_2")
    info = runtime.machine_info()
    assert {"cpu", "cores", "flags", "native_bf16", "torch", "torch_threads"} <= info.keys()
    assert info["flags"] == ["avx2", "fma"]
    assert info["native_bf16"] is False
    assert info["torch"] == torch.__version__
    assert info["torch_threads"] == torch.get_num_threads()
    assert isinstance(info["cores"], int)
