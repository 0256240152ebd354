"""Throughput of the generator and the e4e encoder: forward and forward+backward.

Random weights (speed does not depend on them), at the official size (StyleGAN2
1024 px, e4e IR-SE-50 at 256 px) and at the tiny profile's size, on the CPU and on
a CUDA GPU when one is available. Prints images/s and the achieved GFLOP/s, with
FLOPs counted by ``torch.utils.flop_counter`` on one pass (convolutions and matrix
products; docs/reference.md "Cost model" puts a 1024 px generator forward at about
148.5 GFLOP).

    python bench/nets.py                  # full run
    python bench/nets.py --quick          # ~1-2 minutes on 2 CPU cores
    python bench/nets.py --quick --tiny-only --json out.json

Forward runs under ``torch.no_grad()``; forward+backward takes gradients of all
network parameters (what PTI / stitching tuning do) from a mean-square loss.
float32 is IEEE float32, as in the engine's compute processes (no TF32 on a GPU;
``engine.devices.exact_float32``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from engine.nets.e4e import OFFICIAL_ENCODER_KWARGS, E4EEncoder  # noqa: E402
from engine.nets.stylegan2 import OFFICIAL_GENERATOR_KWARGS, Generator  # noqa: E402
from engine.models.store import TINY_ENCODER_KWARGS, TINY_GENERATOR_KWARGS  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _count_flops(fn: Callable[[], Any]) -> float:
    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def _time(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int
          ) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / max(iters, 1)


def _cases(size: str, device: torch.device, batch: int
           ) -> list[tuple[str, torch.nn.Module, Callable[[torch.nn.Module], Any]]]:
    gk = OFFICIAL_GENERATOR_KWARGS if size == "official" else TINY_GENERATOR_KWARGS
    ek = OFFICIAL_ENCODER_KWARGS if size == "official" else TINY_ENCODER_KWARGS
    torch.manual_seed(0)
    g = Generator(**gk).to(device).eval()
    e = E4EEncoder(**ek).to(device).eval()
    ws = g.mapping(torch.randn(batch, g.z_dim, device=device)).detach()
    img = torch.randn(batch, 3, e.input_resolution, e.input_resolution, device=device)
    return [
        (f"generator {g.img_resolution}px", g, lambda m: m.synthesis(ws)),
        (f"e4e encoder {e.input_resolution}px", e, lambda m: m(img)),
    ]


def run(sizes: list[str], devices: list[torch.device], quick: bool,
        iters: int | None) -> list[dict[str, Any]]:
    rows = []
    for device in devices:
        for size in sizes:
            official = size == "official"
            if official:
                batch = 1 if (quick or device.type == "cpu") else 4
                n_fwd = iters or (2 if quick else (3 if device.type == "cpu" else 20))
                n_bwd = iters or (1 if quick else (2 if device.type == "cpu" else 10))
                warm = 1
            else:
                batch = 8
                n_fwd = iters or (5 if quick else 20)
                n_bwd = iters or (3 if quick else 10)
                warm = 2
            for name, net, fwd in _cases(size, device, batch):
                def f_fwd(net: Any = net, fwd: Any = fwd) -> Any:
                    with torch.no_grad():
                        return fwd(net)

                def f_bwd(net: Any = net, fwd: Any = fwd) -> Any:
                    net.zero_grad(set_to_none=True)
                    out = fwd(net)
                    out.square().mean().backward()

                for mode, fn, n in (("forward", f_fwd, n_fwd),
                                    ("forward+backward", f_bwd, n_bwd)):
                    flops = _count_flops(fn)
                    sec = _time(fn, device, warm, n)
                    row = {"device": str(device), "size": size, "net": name,
                           "mode": mode, "batch": batch, "iters": n,
                           "ms_per_iter": 1e3 * sec, "images_per_s": batch / sec,
                           "gflop_per_image": flops / batch / 1e9,
                           "gflop_per_s": flops / sec / 1e9}
                    rows.append(row)
                    print(f"{row['device']:<6} {size:<8} {name:<22} {mode:<17} "
                          f"b={batch:<3} {row['ms_per_iter']:>9.1f} ms "
                          f"{row['images_per_s']:>9.2f} img/s "
                          f"{row['gflop_per_image']:>8.2f} GFLOP/img "
                          f"{row['gflop_per_s']:>8.1f} GFLOP/s", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="few iterations, official size at batch 1 (~1-2 min on CPU)")
    p.add_argument("--tiny-only", action="store_true", help="skip the official size")
    p.add_argument("--device", default="all", help="cpu | cuda | all (default)")
    p.add_argument("--iters", type=int, default=None, help="timed iterations")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = p.parse_args(argv)
    from engine.devices import exact_float32

    exact_float32()  # float32 as the engine computes it: never TF32 on a GPU
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "all":
        devices = [torch.device("cpu")]
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
    else:
        devices = [torch.device(args.device)]
    sizes = ["tiny"] if args.tiny_only else ["tiny", "official"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"devices: {', '.join(map(str, devices))}", flush=True)
    rows = run(sizes, devices, args.quick, args.iters)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
