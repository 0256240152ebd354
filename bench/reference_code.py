"""The reference code itself as one more loop in the benchmark's rounds.

``bench/pipeline.py --reference-code DIR`` times, next to the re-creation and our
rows, STIT's own code from a checkout of it (``rotemtzaban/STIT``; nothing of it
is copied into this project): its StyleGAN2 networks (``training/networks.py``,
stylegan2-ada-pytorch with STIT's style input, on a CPU through the pure-torch
fallbacks of its custom operations), the ``lpips`` package it imports, its L2
loss, and for stitching its own ``optimize_border`` function. The PTI loop is
the few lines of ``Coach.train``'s inner loop (which cannot be called alone: it
starts with e4e inversions and logging) around those calls: per pass, per frame
in order, a ``force_fp32`` render, ``l2_loss`` + LPIPS, ``zero_grad``, backward
and one ``torch.optim.Adam`` step over all of ``G.parameters()``, locality
regularisation off (``train.py``'s default). Stitching per frame: the edited
frame rendered by the PTI generator (the interior target), then
``optimize_border`` (a deep copy, Adam over all of its parameters, the masked
losses, the final render).

Both sides get the same random weights: our official-architecture generator's
state dict loads into STIT's ``Generator`` key for key, and our LPIPS network's
weights into the package's (:func:`lpips_state`). So the reference code must
reach the re-creation's losses (the benchmark checks it as a same-arithmetic
row), which is also the proof that the re-creation computes what the reference
does.
"""

from __future__ import annotations

import functools
import importlib
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import tqdm

#: files a STIT checkout must hold
REQUIRED = ("training/networks.py", "edit_video_stitching_tuning.py",
            "criteria/l2_loss.py", "configs/hyperparameters.py")


def _torchvision_importable() -> None:
    """``lpips`` imports torchvision. The PyPI torchvision wheel is a CUDA build
    whose operators do not load next to CPU torch, and its import then dies
    registering fake kernels for ``torchvision::nms`` (docs/environment.md
    "torch and torchvision"). Only where that happens: declare the two operator
    schemas it registers them for, and import it again."""
    try:
        import torchvision  # noqa: F401
        return
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
    lib = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _torchvision_importable.lib = lib  # type: ignore[attr-defined]  # keep it alive
    for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
        del sys.modules[name]
    import torchvision  # noqa: F401,F811


def load(path: str | Path) -> SimpleNamespace:
    """STIT's modules from the checkout at ``path``: ``networks``, ``stitching``
    (``edit_video_stitching_tuning``), ``l2_loss``, ``hyperparameters`` and the
    ``lpips`` package.

    Raises:
        SystemExit: ``path`` is not a STIT checkout, or its imports fail.
    """
    root = Path(path).expanduser().resolve()
    missing = [f for f in REQUIRED if not (root / f).is_file()]
    if missing:
        raise SystemExit(f"--reference-code: {root} is not a checkout of STIT "
                         f"(missing {', '.join(missing)})")
    _torchvision_importable()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        import lpips

        mods = {name: importlib.import_module(module) for name, module in (
            ("networks", "training.networks"),
            ("stitching", "edit_video_stitching_tuning"),
            ("l2_loss", "criteria.l2_loss"),
            ("hyperparameters", "configs.hyperparameters"))}
    except ImportError as exc:
        raise SystemExit(f"--reference-code: importing STIT's modules from {root} "
                         f"failed: {exc}") from exc
    # optimize_border draws a progress bar per frame; the benchmark prints tables
    mods["stitching"].trange = functools.partial(tqdm.trange, disable=True)
    return SimpleNamespace(root=root, lpips=lpips, **mods)


def generator(ref: SimpleNamespace, G: Any, device: str) -> Any:
    """STIT's ``Generator`` with ``G``'s architecture and weights (float32
    everywhere: no fp16 layers, ``conv_clamp`` as ``G``'s)."""
    k = G.init_kwargs
    R = ref.networks.Generator(
        z_dim=k["z_dim"], c_dim=0, w_dim=k["w_dim"], img_resolution=k["img_resolution"],
        img_channels=k["img_channels"],
        mapping_kwargs={"num_layers": k["mapping_layers"],
                        "lr_multiplier": k["mapping_lr_mul"]},
        synthesis_kwargs={"channel_base": k["channel_base"],
                          "channel_max": k["channel_max"], "num_fp16_res": 0,
                          "conv_clamp": k["conv_clamp"]})
    R.load_state_dict(G.state_dict(), strict=True)
    return R.to(device).eval().requires_grad_(False)


def lpips_state(lp: Any) -> dict[str, torch.Tensor]:
    """Our LPIPS network's weights under the ``lpips`` package's names: backbone
    ``features.{i}`` -> ``net.slice{s}.{i}`` (the package splits torchvision's
    feature stack at the same layers), head ``lin{k}`` -> ``lin{k}.model.1``
    (after its dropout), the input scaling as ``scaling_layer``."""
    sd = lp.state_dict()
    out = {"scaling_layer.shift": lp.shift, "scaling_layer.scale": lp.scale}
    for key, value in sd.items():
        if key.startswith("features."):
            i = int(key.split(".")[1])
            s = next(n for n, (a, b) in enumerate(lp.slices, 1) if a <= i < b)
            out[f"net.slice{s}.{key.split('.', 1)[1]}"] = value
        elif key.startswith("lin"):
            out[f"{key}.model.1.weight"] = value
            out[f"lins.{key[3:]}.model.1.weight"] = value
    return out


def lpips_net(ref: SimpleNamespace, lp: Any, device: str) -> Any:
    """The ``lpips`` package's LPIPS of ``lp``'s kind with ``lp``'s weights (no
    download: the backbone is built untrained, then overwritten)."""
    net = ref.lpips.LPIPS(net=lp.net, pretrained=True, pnet_rand=True, verbose=False)
    net.load_state_dict(lpips_state(lp), strict=True)
    return net.to(device).eval().requires_grad_(False)


def pti(ref: SimpleNamespace, R0: Any, lpips_pkg: Any, pivots: np.ndarray,
        targets: torch.Tensor, passes: int, cfg: Any, device: str) -> Any:
    """``Coach.train``'s inner loop on a fresh copy of ``R0`` (STIT's generator):
    returns the tuned copy. ``cfg``: our PTI options (lr, loss weights)."""
    import copy

    hp = ref.hyperparameters
    G = copy.deepcopy(R0).train()
    G.requires_grad_(True)
    opt = torch.optim.Adam(G.parameters(), betas=(hp.pti_adam_beta1, 0.999),
                           lr=cfg.lr)
    ws = torch.from_numpy(pivots).to(device)
    for _ in range(passes):
        for i in range(len(pivots)):
            generated = G.synthesis(ws[i:i + 1], noise_mode="const", force_fp32=True)
            real = targets[i:i + 1]
            loss = (ref.l2_loss.l2_loss(generated, real) * cfg.l2_weight
                    + torch.squeeze(lpips_pkg(generated, real)) * cfg.lpips_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return G


def stitch(ref: SimpleNamespace, R: Any, edit_ws: torch.Tensor,
           targets: torch.Tensor, border: torch.Tensor, content: torch.Tensor,
           steps: int, cfg: Any) -> list[float]:
    """Per frame: the interior target rendered by ``R`` (the PTI generator), then
    STIT's ``optimize_border``; returns each frame's border loss after tuning (our
    ``masked_loss`` of the delivered render, as the re-creation reports it)."""
    from engine.stages.stitch_tune import masked_loss

    ref.hyperparameters.stitching_tuning_lr = cfg.lr
    after = []
    for i in range(targets.shape[0]):
        w = edit_ws[i:i + 1]
        with torch.no_grad():
            edited = R.synthesis(w, noise_mode="const", force_fp32=True)
        b, c = border[i:i + 1, None].float(), content[i:i + 1, None].float()
        out = ref.stitching.optimize_border(
            R, targets[i:i + 1], edited, w, border_mask=b, content_mask=c,
            optimize_generator=True, num_steps=steps, loss_l2=not cfg.l1,
            content_loss_lambda=cfg.content_weight,
            border_loss_threshold=cfg.border_loss_threshold)
        after.append(float(masked_loss(out, targets[i:i + 1], border[i:i + 1],
                                       cfg.l1)))
    return after
