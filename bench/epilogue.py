"""The fused epilogue against the eager one, side by side in a training step.

A StyleGAN2 synthesis layer ends in its bias, its noise and a leaky ReLU; the
engine computes those of its large layers as one generated kernel each way
(engine/nets/epilogue.py, docs/pipeline.md "Fused epilogue"). This times a
generator's synthesis forward and backward (the work of a PTI or stitching step,
gradients of every synthesis parameter from a mean-square loss) at the official
architecture with random weights, with the epilogues fused and eager in
alternating order within each round, and prints per precision the median step of
each, the median of the rounds' ratios with their range, the generated-kernel
calls per step (a fused row that ran no kernel fails the run) and how far the
fused image and gradients are from the eager ones.

On the CPU the fused kernels are what the engine uses; on CUDA the engine keeps
the eager operations until this measures the Triton kernels inductor generates
for the same expressions (``FACESTITCH_FUSED_EPILOGUE=all`` for the fused rows).

    python bench/epilogue.py --size 1024                        # the CPU figures
    python bench/epilogue.py --device cuda --size 1024 --batch 2 --dtypes bfloat16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine.devices import exact_float32  # noqa: E402
from engine.nets import epilogue  # noqa: E402
from engine.nets.stylegan2 import OFFICIAL_GENERATOR_KWARGS, Generator  # noqa: E402

#: relative difference (norm) of the fused image and gradients from the eager
#: ones that fails a float32 row: the kernel adds in another order, ~1e-7
FLOAT32_TOLERANCE = 1e-4


@contextlib.contextmanager
def _epilogue(mode: str) -> Iterator[None]:
    """``FACESTITCH_FUSED_EPILOGUE`` set to ``mode`` (``all``: fused on every
    device; ``0``: eager) within the block."""
    before = os.environ.get("FACESTITCH_FUSED_EPILOGUE")
    os.environ["FACESTITCH_FUSED_EPILOGUE"] = mode
    try:
        yield
    finally:
        if before is None:
            del os.environ["FACESTITCH_FUSED_EPILOGUE"]
        else:
            os.environ["FACESTITCH_FUSED_EPILOGUE"] = before


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Step:
    """One synthesis forward and backward of a random official-architecture
    generator at ``size`` px for ``batch`` latents, in ``dtype``."""

    def __init__(self, size: int, batch: int, dtype: str, device: torch.device,
                 formulation: str) -> None:
        torch.manual_seed(0)
        self.G = Generator(**dict(OFFICIAL_GENERATOR_KWARGS, img_resolution=size)
                           ).to(device).train().requires_grad_(False)
        self.G.synthesis.requires_grad_(True)
        with torch.no_grad():
            self.ws = self.G.mapping(torch.randn(batch, self.G.z_dim, device=device),
                                     truncation_psi=0.7)
        self.device, self.dtype, self.formulation = device, dtype, formulation

    def __call__(self) -> torch.Tensor:
        self.G.synthesis.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.dtype == "bfloat16"):
            img = self.G.synthesis(self.ws, fused=self.formulation)
        img.float().square().mean().backward()
        return img.detach()

    def results(self) -> dict[str, torch.Tensor]:
        """The image and every synthesis gradient of one step, in float64."""
        img = self()
        return {"image": img.double(), **{
            n: p.grad.double() for n, p in self.G.synthesis.named_parameters()
            if p.grad is not None}}


def _relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]
              ) -> tuple[float, float, str]:
    """The image's relative difference by norm, the worst gradient's, and that
    gradient's parameter."""
    rel = {k: float((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-30)) for k in b}
    worst = max((k for k in rel if k != "image"), key=rel.__getitem__)
    return rel["image"], rel[worst], worst


def measure(size: int, batch: int, dtype: str, device: torch.device, rounds: int,
            formulation: str) -> dict[str, Any]:
    step = Step(size, batch, dtype, device, formulation)
    arms = {"fused": "all", "eager": "0"}
    calls = {}
    for name, mode in arms.items():  # warm up (the fused arm compiles here)
        with _epilogue(mode):
            before = epilogue.kernel_calls()
            step()
            step()
            _sync(device)
            calls[name] = (epilogue.kernel_calls() - before) / 2
    secs: dict[str, list[float]] = {name: [] for name in arms}
    peak: dict[str, float] = {}
    for r in range(rounds):
        order = list(arms) if r % 2 == 0 else list(arms)[::-1]
        for name in order:
            with _epilogue(arms[name]):
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                _sync(device)
                t0 = time.perf_counter()
                step()
                _sync(device)
                secs[name].append(time.perf_counter() - t0)
                if device.type == "cuda":
                    peak[name] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    with _epilogue("all"):
        fused = step.results()
    with _epilogue("0"):
        eager = step.results()
    image, grads, worst = _relative(fused, eager)
    ratios = [e / f for f, e in zip(secs["fused"], secs["eager"])]
    return {"size": size, "batch": batch, "dtype": dtype, "device": str(device),
            "formulation": formulation, "rounds": rounds,
            "fused_s": statistics.median(secs["fused"]),
            "eager_s": statistics.median(secs["eager"]),
            "ratio": statistics.median(ratios), "ratio_range": [min(ratios),
                                                               max(ratios)],
            "kernel_calls_per_step": calls["fused"],
            "eager_kernel_calls_per_step": calls["eager"],
            "image_rel_diff": image, "grad_rel_diff": grads, "worst_grad": worst,
            **({"peak_gib": peak} if peak else {})}


def check(row: dict[str, Any]) -> list[str]:
    """Why a row does not stand for what it claims (empty when it does)."""
    bad = []
    if row["kernel_calls_per_step"] == 0:
        bad.append(f"{row['dtype']}: the fused row ran no generated kernel "
                   f"({epilogue.failure() or 'no layer reached the size threshold'})")
    if row["eager_kernel_calls_per_step"]:
        bad.append(f"{row['dtype']}: the eager row ran generated kernels")
    if row["dtype"] == "float32" and max(row["image_rel_diff"],
                                         row["grad_rel_diff"]) > FLOAT32_TOLERANCE:
        bad.append(f"float32: fused differs from eager by "
                   f"{max(row['image_rel_diff'], row['grad_rel_diff']):.2e} "
                   f"(> {FLOAT32_TOLERANCE:g})")
    return bad


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=int, default=1024, help="generator resolution")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--formulation", default="hybrid",
                   help="the synthesis' fused mode (engine/nets/ops.py)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    exact_float32()
    if device.type == "cpu":
        from engine.stages.compute import keep_freed_memory

        keep_freed_memory()  # as every compute process
    print(f"fused epilogue against eager, {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}"
          f"{torch.get_num_threads()} threads), official architecture at "
          f"{args.size} px, batch {args.batch}, {args.rounds} rounds, layers of "
          f"{epilogue.MIN_ELEMENTS / 2 ** 20:g} Mi elements and up fused", flush=True)
    rows, problems = [], []
    for dtype in args.dtypes.split(","):
        if dtype not in ("float32", "bfloat16"):
            raise SystemExit(f"--dtypes: {dtype!r} is not float32 or bfloat16")
        row = measure(args.size, args.batch, dtype, device, args.rounds,
                      args.formulation)
        rows.append(row)
        problems += check(row)
        lo, hi = row["ratio_range"]
        print(f"  {dtype:<9} step fused {row['fused_s'] * 1e3:8.1f} ms  eager "
              f"{row['eager_s'] * 1e3:8.1f} ms  ratio {row['ratio']:.3f}x "
              f"({lo:.3f}-{hi:.3f})  kernels/step {row['kernel_calls_per_step']:.0f}"
              f"  image diff {row['image_rel_diff']:.1e}  grad diff "
              f"{row['grad_rel_diff']:.1e} ({row['worst_grad']})"
              + (f"  peak GiB fused {row['peak_gib']['fused']:.2f} eager "
                 f"{row['peak_gib']['eager']:.2f}" if "peak_gib" in row else ""),
              flush=True)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "problems": problems},
                                        indent=2))
    for line in problems:
        print("FAILED:", line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
