"""What the machine computes with: the device, how host arrays reach it, the precision `auto` resolves to, and
how a run names them.

Figures depend on these (bf16 and fp32 runs of one recipe differ; so can two CPU kinds), so every run records
`describe_device` and its precision, and a resumed run is bit-identical only on the same machine kind, precision
and thread count.
"""

from __future__ import annotations

import os
import platform

import numpy as np
import torch
from torch import Tensor, nn

from .errors import RealmixError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}  # the names runs record -> autocast dtype (None: float32)


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RealmixError("params: train.device=cuda but no CUDA GPU is visible; use train.device=auto or cpu")
        return torch.device("cuda")
    return torch.device("cpu")


def to_device(array: np.ndarray, device: torch.device, *, pin: bool = False) -> Tensor:
    """A host array on `device`; with `pin`, through page-locked memory so the copy is asynchronous (no host
    wait inside a training step)."""
    host = torch.from_numpy(np.ascontiguousarray(array))
    if pin:
        host = host.pin_memory()
    return host.to(device, non_blocking=pin)


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bfloat16 natively (else bf16 autocast is emulated and slower than fp32).

    On CPU: AVX512-BF16 or AMX in the CPU, and oneDNN's conv kernels not capped below AVX-512 (the CPUID probes
    do not see ONEDNN_MAX_CPU_ISA; capped, bf16 convs leave oneDNN for slow reference kernels)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private in torch.cpu; absent -> fp32
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes) and not onednn_below_avx512()


def pick_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of forwards for train.precision (None: float32 throughout)."""
    if name == "fp32" or (name == "auto" and not native_bf16(device)):
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise RealmixError("params: train.precision=bf16 but this GPU has no bfloat16; use train.precision=fp32")
    return torch.bfloat16


def precision_name(dtype: torch.dtype | None) -> str:
    """"bf16" or "fp32": how runs record the precision they trained and evaluated in."""
    return next(k for k, v in PRECISIONS.items() if v == dtype)


def describe_device(device: torch.device) -> str:
    """The hardware a run computed on, as recorded beside its figures: "cpu AVX2", "cpu AVX512" (ATen's CPU
    capability, plus "oneDNN <isa>" where ONEDNN_MAX_CPU_ISA caps the conv kernels) or "cuda <GPU name>"."""
    if device.type == "cuda":
        return f"cuda {torch.cuda.get_device_name(device)}"
    cap = torch.backends.cpu.get_cpu_capability()
    isa = _onednn_isa_cap()
    return f"cpu {cap}" + (f" oneDNN {isa}" if isa else "")


def _onednn_isa_cap() -> str | None:
    """The ISA oneDNN is capped at by the environment (read when torch loads), or None."""
    value = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return value.upper() if value and value.upper() not in ("ALL", "DEFAULT") else None


def onednn_below_avx512() -> bool:
    """Whether oneDNN's CPU convolutions run below AVX-512 here (an x86 CPU with AVX2 only, or capped by the
    environment). Other architectures have other kernels: False."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    isa = _onednn_isa_cap()
    if isa is not None:
        return not isa.startswith(("AVX512", "AVX10"))
    return not torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def channels_last_crash(model: nn.Module, device: torch.device) -> int | None:
    """The input channels of a conv that would crash oneDNN if trained channels-last here, or None.

    oneDNN defect (torch 2.13's oneDNN v3.12, seen on AVX2-only CPUs and under ONEDNN_MAX_CPU_ISA=AVX2): the
    backward of a 1x1 stride-2 conv with fewer than 8 input channels on a channels-last input, one thread
    (`brgconv_strided:avx2 backward_data`, e.g. mb4_ic4oc8_ih28oh14kh1sh2) corrupts the heap: a segfault or
    "double free" a few steps later. WRN's strided shortcut convs have model.filters input channels. It matches
    oneDNN issue #6035 (open: the AVX2 1x1 conv's backward writes past its workspace for nhwc, IC < 8, stride 2;
    segfault with one thread, hangs or wrong weight gradients with more), so the guard ignores the thread count.
    """
    if device.type != "cpu" or not onednn_below_avx512():
        return None
    narrow = [m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels < 8
              and m.kernel_size == (1, 1) and m.stride != (1, 1)]
    return min(narrow) if narrow else None


def check_channels_last(model: nn.Module, device: torch.device) -> None:
    """Refuse channels-last training where oneDNN is known to crash (`channels_last_crash`), instead of crashing."""
    channels = channels_last_crash(model, device)
    if channels is not None:
        raise RealmixError(
            f"params: train.channels_last=true with a strided 1x1 conv of {channels} input channels "
            "(model.filters < 8) crashes oneDNN on this CPU (no AVX-512); use train.channels_last=auto or false, "
            "or model.filters >= 8")
