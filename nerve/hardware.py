"""What the machine computes natively, and the dtype that follows from it.

bfloat16 halves memory traffic and, where the hardware has bf16 arithmetic, doubles or triples matmul speed.
Where it has not, it is emulated: on an AVX2-only x86 CPU a bf16 matmul runs about 60 times slower than the
same matmul in float32. So ``dtype: auto`` (the default of the engine and of tuning) decides from the
hardware:

* a CUDA GPU: bfloat16 where the GPU supports it, else float16 (serving) or float32 master weights (tuning);
* a CPU with native bf16 (AVX-512 BF16 or AMX-BF16 on x86, the BF16 extension on Arm): bfloat16;
* any other CPU: float32.

An explicit dtype always wins. Each decision carries its reason, which the service and the trainer log at
start and the service reports in ``GetModelInfo``; benchmarks record :func:`describe_machine` with every figure.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")
"""The dtype settings nerve accepts (engine and tuning)."""

BF16_CPU_FLAGS: tuple[str, ...] = ("avx512_bf16", "amx_bf16", "bf16")
"""CPU features with native bf16 arithmetic (x86 AVX-512 BF16 and AMX-BF16; Arm's ``bf16``)."""

_REPORTED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_tile", "amx_bf16",
                   "amx_int8", "bf16", "sve", "asimd")
"""Flags worth recording beside a figure (the ones that change which kernels run)."""


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as far as dtype and kernel choice are concerned."""

    model: str
    architecture: str
    cores: int
    flags: frozenset[str] = field(default_factory=frozenset)
    """Lower-case feature names, as ``/proc/cpuinfo`` spells them (``avx512_bf16``, ``amx_bf16``, ...)."""
    torch_capability: str | None = None
    """``torch.backends.cpu.get_cpu_capability()``: the vector ISA torch's own kernels were dispatched to."""

    @property
    def native_bf16(self) -> bool:
        return any(f in self.flags for f in BF16_CPU_FLAGS)

    def to_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "architecture": self.architecture,
            "cores": self.cores,
            "flags": sorted(f for f in self.flags if f in _REPORTED_FLAGS),
            "torch_capability": self.torch_capability,
            "native_bf16": self.native_bf16,
        }


_CPUINFO_NAMES = {"avx512_f": "avx512f", "avx512_dq": "avx512dq", "avx512_bw": "avx512bw", "avx512_vl": "avx512vl",
                  "fma3": "fma"}


def _proc_cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str, frozenset[str]]:
    model, flags = "", set()
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "cpu model") and not model:
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, frozenset(flags)


def _torch_capabilities() -> tuple[str | None, Mapping[str, object]]:
    try:
        import torch
    except ImportError:
        return None, {}
    capability = torch.backends.cpu.get_cpu_capability()
    get = getattr(torch.cpu, "get_capabilities", None)  # cpuinfo's view of the CPU (torch >= 2.8)
    return capability, (get() if get is not None else {})


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU: the kernel's flags, completed by torch's own detection (cpuinfo)."""
    model, flags = _proc_cpuinfo()
    capability, caps = _torch_capabilities()
    # cpuinfo spells a few features differently from the kernel; keep the kernel's spelling.
    extra = {_CPUINFO_NAMES.get(k, k) for k, v in caps.items() if v is True}
    return CpuInfo(
        model=model or str(caps.get("cpu_name") or platform.processor() or "unknown"),
        architecture=platform.machine(),
        cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
        flags=frozenset(flags | extra),
        torch_capability=capability,
    )


@dataclass(frozen=True)
class Accelerator:
    """Whether a CUDA GPU is present and what it supports (``cuda=False`` describes a CPU-only machine)."""

    cuda: bool
    cuda_bf16: bool = False
    name: str | None = None


def accelerator() -> Accelerator:
    try:
        import torch
    except ImportError:
        return Accelerator(cuda=False)
    if not torch.cuda.is_available():
        return Accelerator(cuda=False)
    return Accelerator(cuda=True, cuda_bf16=bool(torch.cuda.is_bf16_supported()), name=torch.cuda.get_device_name(0))


@dataclass(frozen=True)
class DtypeChoice:
    """A resolved dtype and why it was chosen."""

    dtype: str
    """``float32``, ``bfloat16`` or ``float16``."""
    reason: str
    requested: str = "auto"

    def __str__(self) -> str:
        return f"{self.dtype} ({self.reason})"


def choose_dtype(requested: str = "auto", *, purpose: str = "serve", device: Accelerator | None = None,
                 cpu: CpuInfo | None = None) -> DtypeChoice:
    """Resolve a dtype setting for this hardware.

    ``purpose`` is ``serve`` (weights and activations of inference) or ``train`` (the compute dtype of tuning:
    the frozen base of an adapter method, and whether bf16 mixed precision is on). On a GPU without bf16,
    serving falls back to float16 and training to float32 (fp16 training needs loss scaling nerve does not set).
    """
    if requested not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {requested!r}")
    if purpose not in ("serve", "train"):
        raise ValueError(f"purpose must be serve or train, not {purpose!r}")
    if requested != "auto":
        return DtypeChoice(requested, "set explicitly", requested)
    device = accelerator() if device is None else device
    if device.cuda:
        gpu = device.name or "CUDA GPU"
        if device.cuda_bf16:
            return DtypeChoice("bfloat16", f"{gpu} supports bf16", requested)
        fallback = "float16" if purpose == "serve" else "float32"
        return DtypeChoice(fallback, f"{gpu} has no bf16", requested)
    cpu = cpu_info() if cpu is None else cpu
    native = [f for f in BF16_CPU_FLAGS if f in cpu.flags]
    if native:
        return DtypeChoice("bfloat16", f"CPU {cpu.model} has native bf16 ({', '.join(native)})", requested)
    isa = cpu.torch_capability or "no AVX-512 BF16/AMX"
    return DtypeChoice("float32", f"CPU {cpu.model} has no native bf16 (torch: {isa}); bf16 would be emulated",
                       requested)


def describe_machine(dtypes: Iterable[str] = ()) -> dict[str, object]:
    """What a benchmark records beside its figures: CPU, cores, flags, accelerator and the dtypes used."""
    dev = accelerator()
    out: dict[str, object] = {"cpu": cpu_info().to_dict(), "gpu": dev.name if dev.cuda else None}
    dtypes = list(dtypes)
    if dtypes:
        out["dtypes"] = dtypes
    return out
