"""A computing process keeps the memory it frees (engine/stages/compute.py)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Allocates and frees a 64 MiB block through malloc a few times, writing every
# page (as a tensor's first use does), and reports the page faults of the
# repeats, after the first has mapped the memory.
_PROBE = """
import ctypes, json, resource
from engine.stages.compute import keep_freed_memory
kept = keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 64 << 20
def cycle():
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    libc.free(p)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
cycle()
before = faults()
for _ in range(4):
    cycle()
print(json.dumps({"kept": kept, "faults": (faults() - before) / 4}))
"""


def _probe(env_value: str | None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("FACESTITCH_KEEP_FREED_MEMORY", None)
    if env_value is not None:
        env["FACESTITCH_KEEP_FREED_MEMORY"] = env_value
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the allocator setting is glibc's")
def test_freed_memory_is_reused_without_page_faults():
    system = _probe("0")
    kept = _probe(None)
    assert system["kept"] is False and kept["kept"] is True
    # 64 MiB is 16 384 pages of 4 KiB: the system allocator maps (and the kernel
    # zeroes) them afresh every time; kept memory is already mapped
    assert system["faults"] > 8000
    assert kept["faults"] < 0.05 * system["faults"]


# Frees a block larger than 2 GiB (never touched, so nothing is paid for it) and
# reports the heap's size after, then reserves 64 MiB and reports the page faults
# of writing a 48 MiB block inside the reserve.
_LARGE = """
import ctypes, json, resource
from engine.stages.compute import keep_freed_memory, reserve_heap
keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def heap():
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            a, b = (int(x, 16) for x in line.split()[0].split("-"))
            return b - a
    return 0
p = libc.malloc(3 << 30)
libc.free(p)
after_free = heap()
reserved = reserve_heap(64 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
q = libc.malloc(48 << 20)
ctypes.memset(q, 1, 48 << 20)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"heap_after_free": after_free, "reserved": reserved,
                  "faults": faults}))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the allocator setting is glibc's")
def test_a_heap_past_2_gib_is_kept_and_a_reserve_is_reused():
    """The heap is never trimmed, however large its free top (a threshold of 2
    GiB, glibc's largest int, trimmed it, and the next steps faulted it back);
    memory reserved up front serves later blocks without page faults."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("FACESTITCH_KEEP_FREED_MEMORY", None)
    out = subprocess.run([sys.executable, "-c", _LARGE], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["heap_after_free"] >= 3 << 30
    assert got["reserved"] == 64 << 20
    assert got["faults"] < 0.05 * (48 << 20) / 4096  # 12 288 pages of 4 KiB


def test_a_reserve_never_takes_more_than_half_the_available_memory(monkeypatch):
    from engine.stages import compute

    monkeypatch.setattr("engine.stages.compute.free_memory", lambda dev: 64 << 20)
    if not compute.keep_freed_memory():
        pytest.skip("the allocator setting is glibc's")
    assert compute.reserve_heap(1 << 40) == 32 << 20
    monkeypatch.setattr("engine.stages.compute.free_memory", lambda dev: 0)
    assert compute.reserve_heap(1 << 20) == 0


def test_pin_threads_keeps_freed_memory(tmp_path):
    """Every unit of a job enters its compute through pin_threads."""
    from engine.stages import compute

    compute.pin_threads(tmp_path)
    assert compute.keep_freed_memory() is (
        platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
        and os.environ.get("FACESTITCH_KEEP_FREED_MEMORY", "1") != "0")


def test_pin_threads_makes_float32_exact(tmp_path):
    """Every unit of a job computes float32 as IEEE float32: no TF32 on cuDNN
    convolutions (PyTorch's default on Ampere and later GPUs) or CUDA matrix
    products, oneDNN's float32 not in bfloat16, and the long-standing attributes
    stay readable (PyTorch refuses to read them after a mix of its two APIs)."""
    import torch

    from engine.devices import native_bf16
    from engine.stages import compute

    onednn = (torch.backends.mkldnn, torch.backends.mkldnn.conv,
              torch.backends.mkldnn.matmul)
    torch.backends.cudnn.allow_tf32 = True
    for backend in onednn:  # what a user's code might have set
        backend.fp32_precision = "bf16"
    try:
        x = torch.randn(1, 64, 16, 16)
        w = torch.randn(64, 64, 3, 3)
        exact = torch.nn.functional.conv2d(x.double(), w.double(), padding=1)

        def err() -> float:
            y = torch.nn.functional.conv2d(x, w, padding=1)
            return float((y - exact).abs().max() / exact.abs().max())

        lossy = err()
        compute.pin_threads(tmp_path)
        assert torch.backends.cudnn.allow_tf32 is False
        assert torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.backends.mkldnn.fp32_precision == "ieee"
        assert torch.backends.mkldnn.conv.fp32_precision == "ieee"
        assert torch.backends.mkldnn.matmul.fp32_precision == "ieee"
        assert err() < 1e-5
        if native_bf16("cpu"):  # oneDNN honours the bf16 setting here
            assert lossy > 1e-4
    finally:
        torch.backends.cudnn.allow_tf32 = True  # PyTorch's defaults
        for backend in onednn:
            backend.fp32_precision = "none"
