"""Devices and training precision, resolved in one place.

``"auto"`` device means CUDA when torch sees a GPU, else the CPU; ``"auto"``
precision means bfloat16 where the device computes it natively (CUDA GPUs that
report bf16 support; CPUs with AVX512-BF16 or AMX-BF16), float32 elsewhere
(measured speed-ups: docs/pipeline.md, "Speed"). float32 is IEEE float32
everywhere (:func:`exact_float32`); TensorFloat-32 only when a job names it
(``tf32``, :func:`tensor_float32`, on GPUs that compute it: :func:`check_dtype`).
torch is imported only when something must be asked of it, so the engine's job
loop starts without it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
from pathlib import Path
from typing import Any, Iterator

from fsexchange.errors import PrecisionUnsupported

__all__ = ["valid_device", "resolve_device", "native_bf16", "tf32_capable",
           "resolve_dtype", "check_dtype", "exact_float32", "tensor_float32"]

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def valid_device(device: str) -> bool:
    """Whether ``device`` is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    return bool(_DEVICE.match(str(device)))


def resolve_device(device: Any = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` if torch sees a GPU, else ``"cpu"``; others pass
    through after a syntax check.

    Raises:
        ValueError: not auto, cpu, cuda or cuda:N.
    """
    device = str(device)
    if not valid_device(device):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device != "auto":
        return device
    if importlib.util.find_spec("torch") is None:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def native_bf16(device: Any) -> bool:
    """Whether ``device`` computes bfloat16 natively (not by float32 emulation):
    CUDA devices that report bf16 support; CPUs with AVX512-BF16 or AMX-BF16 (read
    from /proc/cpuinfo; other systems: False)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type != "cpu":
        return False
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                  if ln.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def tf32_capable(device: Any) -> bool:
    """Whether ``device`` computes TensorFloat-32: a CUDA GPU of compute capability
    8.0 or later (Ampere, Hopper and after) that torch sees."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return False
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        return False
    return torch.cuda.get_device_capability(index)[0] >= 8


def check_dtype(dtype: str, device: Any) -> None:
    """Refuse a precision ``device`` cannot compute (``tf32`` off a TF32 GPU).
    Imports torch only for ``tf32``, so the job loop checks a job without it.

    Raises:
        PrecisionUnsupported: with what to ask for instead.
    """
    if dtype == "tf32" and not tf32_capable(device):
        raise PrecisionUnsupported(
            f"options.dtype tf32 (TensorFloat-32) needs a CUDA GPU of compute "
            f"capability 8.0 or later, and this job computes on {device}; submit "
            "with dtype float32 (exact) or bfloat16, or on such a GPU",
            field="options.dtype")


def resolve_dtype(dtype: str, device: Any) -> str:
    """``options.dtype`` -> ``"float32"``, ``"tf32"`` or ``"bfloat16"`` for
    ``device``: ``auto`` by :func:`native_bf16` (never ``tf32``); an explicit one
    as given, once :func:`check_dtype` accepts it."""
    if dtype == "auto":
        return "bfloat16" if native_bf16(device) else "float32"
    check_dtype(dtype, device)
    return dtype


def exact_float32() -> None:
    """Make float32 mean IEEE float32 in this process, on every backend.

    PyTorch lets cuDNN run float32 convolutions as TensorFloat-32 by default on
    Ampere and later GPUs (a 10-bit mantissa: an H100 takes a StyleGAN2
    convolution at bfloat16-like precision while the job says float32), and
    oneDNN can be switched to compute float32 in bfloat16 on CPUs. The reference
    recipe's float32 is the precision the reference's results were produced in
    (GPUs without TF32), StyleGAN2's own training code turns TF32 off for the same
    reason, and the benchmark's same-arithmetic check would pass a TF32 row
    against a TF32 re-creation without a word. So every compute process turns
    TF32 off for cuDNN convolutions and CUDA matrix products, and keeps oneDNN's
    float32 at IEEE; bfloat16 work is unaffected (the precision option chooses it,
    labelled). The CUDA switches are set through their long-standing attributes:
    PyTorch refuses to read those once the newer ``fp32_precision`` ones have been
    set differently for convolutions and RNNs, and libraries still read them."""
    import torch

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    # the backend-wide setting too: an operation left at "none" follows it
    torch.backends.mkldnn.fp32_precision = "ieee"
    torch.backends.mkldnn.conv.fp32_precision = "ieee"
    torch.backends.mkldnn.matmul.fp32_precision = "ieee"


@contextlib.contextmanager
def tensor_float32(device: Any, dtype: str) -> Iterator[None]:
    """Within the block, cuDNN convolutions and CUDA matrix products take
    TensorFloat-32 inputs (float32's range, a 10-bit mantissa, float32
    accumulation) when ``dtype`` is ``"tf32"``; for any other precision nothing
    changes (float32 stays exact: :func:`exact_float32`). A training step runs
    its forward and its backward inside (autocast covers only the forward; the
    backward's convolutions read these switches when they run). The switches are
    the process's: an engine process computes one job at a time. What they were
    is put back on the way out.

    Raises:
        PrecisionUnsupported: ``tf32`` on a device without it.
    """
    if dtype != "tf32":
        yield
        return
    check_dtype(dtype, device)
    import torch

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (cudnn.allow_tf32, matmul.allow_tf32)
    cudnn.allow_tf32 = matmul.allow_tf32 = True
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = before
