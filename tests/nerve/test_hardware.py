"""The dtype follows the hardware: bf16 where it is native, float32 where it would be emulated."""

from __future__ import annotations

from pathlib import Path

import pytest

from nerve import hardware
from nerve.hardware import Accelerator, CpuInfo, choose_dtype

AVX2_ONLY = CpuInfo(model="AMD EPYC 7B13", architecture="x86_64", cores=2, flags=frozenset({"avx2", "fma", "sse4_2"}),
                    torch_capability="AVX2")
AVX512_NO_BF16 = CpuInfo(model="Intel Xeon Platinum 8171M", architecture="x86_64", cores=2,
                         flags=frozenset({"avx2", "fma", "avx512f", "avx512bw"}), torch_capability="AVX512")
ZEN4 = CpuInfo(model="AMD EPYC 9R14", architecture="x86_64", cores=2,
               flags=frozenset({"avx2", "avx512f", "avx512_bf16"}), torch_capability="AVX512")
SAPPHIRE_RAPIDS = CpuInfo(model="Intel Xeon Gold 6448Y", architecture="x86_64", cores=2,
                          flags=frozenset({"avx512f", "amx_tile", "amx_bf16"}), torch_capability="AVX512")
GRAVITON3 = CpuInfo(model="Neoverse-V1", architecture="aarch64", cores=2, flags=frozenset({"asimd", "sve", "bf16"}),
                    torch_capability="SVE256")
NO_GPU = Accelerator(cuda=False)


@pytest.mark.parametrize("cpu", [AVX2_ONLY, AVX512_NO_BF16])
def test_cpu_without_native_bf16_gets_float32(cpu: CpuInfo) -> None:
    for purpose in ("serve", "train"):
        choice = choose_dtype("auto", purpose=purpose, device=NO_GPU, cpu=cpu)
        assert choice.dtype == "float32"
        assert "emulated" in choice.reason and cpu.model in choice.reason


@pytest.mark.parametrize(("cpu", "flag"), [(ZEN4, "avx512_bf16"), (SAPPHIRE_RAPIDS, "amx_bf16"), (GRAVITON3, "bf16")])
def test_cpu_with_native_bf16_gets_bfloat16(cpu: CpuInfo, flag: str) -> None:
    choice = choose_dtype("auto", device=NO_GPU, cpu=cpu)
    assert choice.dtype == "bfloat16" and flag in choice.reason


def test_gpu_decides_before_the_cpu() -> None:
    a100 = Accelerator(cuda=True, cuda_bf16=True, name="NVIDIA A100")
    t4 = Accelerator(cuda=True, cuda_bf16=False, name="Tesla T4")
    assert choose_dtype("auto", device=a100, cpu=AVX2_ONLY).dtype == "bfloat16"
    assert choose_dtype("auto", purpose="serve", device=t4, cpu=ZEN4).dtype == "float16"
    # fp16 training would need loss scaling: master weights stay float32 on a GPU without bf16
    assert choose_dtype("auto", purpose="train", device=t4, cpu=ZEN4).dtype == "float32"


def test_explicit_setting_wins_over_the_hardware() -> None:
    choice = choose_dtype("bfloat16", device=NO_GPU, cpu=AVX2_ONLY)
    assert (choice.dtype, choice.reason, choice.requested) == ("bfloat16", "set explicitly", "bfloat16")
    assert choose_dtype("float32", device=NO_GPU, cpu=ZEN4).dtype == "float32"
    with pytest.raises(ValueError, match="dtype must be one of"):
        choose_dtype("fp8", device=NO_GPU, cpu=ZEN4)


def test_proc_cpuinfo_flags_are_read(tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n"
                    "processor\t: 1\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    model, flags = hardware._proc_cpuinfo(str(path))
    assert model == "AMD EPYC 9R14" and {"avx2", "avx512_bf16"} <= flags
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16\nCPU part\t: 0xd40\n")
    assert "bf16" in hardware._proc_cpuinfo(str(arm))[1]
    assert hardware._proc_cpuinfo(str(tmp_path / "missing")) == ("", frozenset())


def test_this_machine_is_described_consistently() -> None:
    info = hardware.cpu_info()
    assert info.cores >= 1 and info.architecture
    described = hardware.describe_machine(["float32"])
    assert described["cpu"]["native_bf16"] == info.native_bf16 and described["dtypes"] == ["float32"]
    expected = "bfloat16" if info.native_bf16 else "float32"
    assert choose_dtype("auto", device=NO_GPU).dtype == expected


def test_engine_config_rejects_unknown_dtypes() -> None:
    from nerve.engines.vllm import EngineConfig

    assert EngineConfig().dtype == "auto"
    with pytest.raises(ValueError, match="dtype must be one of"):
        EngineConfig(dtype="half-ish")


@pytest.mark.parametrize(("cpu", "weights", "mixed"), [(AVX2_ONLY, "float32", False), (ZEN4, "bfloat16", True)])
def test_tuning_dtype_follows_the_cpu(monkeypatch: pytest.MonkeyPatch, cpu: CpuInfo, weights: str,
                                      mixed: bool) -> None:
    import torch

    from nerve.tuning.config import TuneConfig
    from nerve.tuning.methods import get_method, mixed_precision_bf16

    monkeypatch.setattr(hardware, "cpu_info", lambda: cpu)
    monkeypatch.setattr(hardware, "accelerator", lambda: NO_GPU)
    cfg = TuneConfig()
    assert get_method("lora").train_dtype(cfg) == getattr(torch, weights)  # the frozen base
    assert get_method("full").train_dtype(cfg) == torch.float32  # master weights stay float32
    assert mixed_precision_bf16(cfg) is mixed
    cfg.train.bf16 = not mixed  # an explicit train.bf16 wins
    assert mixed_precision_bf16(cfg) is (not mixed)
    cfg.model.dtype = "float32"
    assert get_method("lora").train_dtype(cfg) == torch.float32
