"""Numeric precision of a run: fp32, or autocast to bf16 / fp16 with fp32 master weights.

Autocast leaves parameters, optimizer state and gradients in fp32; matmuls run in the lower
precision. The losses cast their inputs to fp32 themselves (softmax at T and the KL are
computed in fp32 whatever the forward ran in).
"""

from __future__ import annotations

import contextlib
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any, ContextManager

import torch

from distill_lab.errors import SpecError

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True on CPUs with AMX-BF16 or AVX512-BF16 units (Linux: read from /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "amx_bf16" in flags or "avx512_bf16" in flags


EMULATED_BF16 = ("training.precision bf16 on a CPU without native bf16 units (no amx_bf16 / avx512_bf16 in "
                 "/proc/cpuinfo): bf16 is emulated there and many times SLOWER than fp32; 'auto' picks fp32 on it")


def notes(training: Any) -> tuple[str, ...]:
    """What `validate` should say about the spec's precision on this machine (nothing when it fits)."""
    device = training.device if training.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    return (EMULATED_BF16,) if training.precision == "bf16" and device == "cpu" and not cpu_has_native_bf16() else ()


@lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    log.warning(message)


def resolve(name: str, device: torch.device) -> str:
    """The precision a run really uses on `device`: 'fp32', 'bf16' or 'fp16'."""
    if name not in PRECISIONS:
        raise SpecError(f"training.precision: {name!r} is not one of {', '.join(PRECISIONS)}")
    if name == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        _warn_once(EMULATED_BF16)  # measured on such a CPU: docs/benchmarks.md, "bench precision"
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp32"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise SpecError("training.precision 'fp16' needs a CUDA device (use 'bf16' or 'auto' on CPU)")
    return name


def autocast(device: torch.device | str, precision: str) -> ContextManager[object]:
    """Autocast for a resolved precision; a no-op context for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    return torch.autocast(device_type=device_type, dtype=_DTYPES[precision])
