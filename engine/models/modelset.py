"""The networks a job uses, resolved from the model store: :func:`load_models`.

Profiles:

- ``official``: the FFHQ-1024 set (``ffhq.pkl`` or the rosinality ``.pt``,
  ``e4e_ffhq_encode.pt``, ``79999_iter.pth``, the LPIPS AlexNet backbone, the STIT
  W directions), read with the safe loaders of ``engine.models.checkpoints``.
- ``tiny``: small networks initialised deterministically from a seed on first use
  and saved into the store in our own format (``<store>/tiny/``). They are random:
  every output made with them must say so (``ModelSet.info["label"]``).
- ``auto``: official when every official file is installed, else tiny
  (``info["auto_fallback"]`` and ``info["missing"]`` let the caller say so).

Example::

    ms = load_models("tiny")
    ws = ms.encoder(img)                         # [N, 10, 64], img [N,3,64,64]
    rec = ms.generator.synthesis(ws)             # [N, 3, 64, 64]
    loss = ms.lpips(rec, img)                    # [N]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from fsexchange.errors import ModelError, ModelFormatError, ModelMissing

from engine.devices import resolve_device
from engine.models.cache import cached, files_fingerprint
from engine.models.checkpoints import load_encoder, load_generator
from engine.models.formats.native import load_network, read_network_meta, save_network
from engine.models.directions import Direction, available_edits
from engine.nets.e4e import E4EEncoder
from engine.nets.lpips import LPIPS
from engine.nets.stylegan2 import Generator
from engine.models.store import (
    LICENCES,
    TINY_ENCODER_KWARGS,
    TINY_GENERATOR_KWARGS,
    TINY_SEED,
    Store,
    manifest_entry,
    resolve_profile,
)

__all__ = ["ModelSet", "load_models", "cached_models", "store_fingerprint",
           "build_tiny", "TINY_LABEL"]

log = logging.getLogger(__name__)

TINY_LABEL = ("TINY TEST MODELS: random networks from a fixed seed, not trained; "
              "results show that the pipeline runs, not what it does")
OFFICIAL_LABEL = "official FFHQ-1024 StyleGAN2 + e4e (non-commercial terms)"


@dataclass
class ModelSet:
    """Everything the pipeline's networks need, on one device, in eval mode.

    Attributes:
        profile: "official" | "tiny".
        generator: StyleGAN2 ``Generator``.
        encoder: ``encoder(img [N,3,Re,Re] in [-1,1]) -> ws [N, num_ws, w_dim]``
            with ``latent_avg`` already added (other sizes are resized).
        encoder_resolution: Re (256 official, 64 tiny).
        lpips: ``lpips(a, b) -> [N]`` for images in [-1, 1].
        parser_path: BiSeNet ``79999_iter.pth`` when installed.
        directions: edit directions by name (``engine.models.directions.Direction``).
        info: JSON-able facts: ``files`` (role -> path, sha256), ``licences``,
            ``tiny`` (bool), ``label`` (say it in every output), ``profile``,
            ``auto_fallback``, ``missing``.
    """

    profile: str
    generator: Generator
    encoder: nn.Module
    encoder_resolution: int
    lpips: nn.Module
    parser_path: Path | None
    directions: dict[str, Direction]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def tiny(self) -> bool:
        return bool(self.info.get("tiny"))

    @property
    def label(self) -> str:
        return str(self.info.get("label", self.profile))


# --- tiny ---------------------------------------------------------------------------


def _tiny_paths(store: Store) -> tuple[Path, Path]:
    return store.tiny_dir / "generator.pt", store.tiny_dir / "encoder.pt"


def _tiny_current(path: Path, kwargs: dict[str, Any]) -> bool:
    try:
        meta = read_network_meta(path)
    except (ModelMissing, ModelFormatError):
        return False
    return path.is_file() and meta.get("init_kwargs") == kwargs and \
        meta.get("info", {}).get("seed") == TINY_SEED


def build_tiny(seed: int = TINY_SEED) -> tuple[Generator, E4EEncoder]:
    """The tiny generator and encoder, initialised deterministically from ``seed``.

    ``w_avg`` is the mean of 4096 mapped z (so truncation means something), ToRGB
    weights are scaled so images mostly lie in [-1, 1], and the encoder starts from
    ``w_avg`` (``latent_avg``) with small style deltas.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g = Generator(**TINY_GENERATOR_KWARGS)
        e = E4EEncoder(**TINY_ENCODER_KWARGS)
        with torch.no_grad():
            z = torch.randn(4096, g.z_dim)
            w_avg = g.mapping(z)[:, 0].mean(dim=0)
            g.mapping.w_avg.copy_(w_avg)
            # The image is linear in the ToRGB weights: scale them so that random
            # images have a std of about 0.5, i.e. mostly inside [-1, 1].
            std = g(torch.randn(16, g.z_dim)).std()
            for r in g.synthesis.block_resolutions:
                getattr(g.synthesis, f"b{r}").torgb.weight.mul_(0.5 / std)
            e.latent_avg.copy_(w_avg.expand_as(e.latent_avg))
            for block in e.styles:  # untrained: keep codes near the average
                block.linear.weight.mul_(0.1)
    return g.eval(), e.eval()


def _load_tiny(store: Store, device: torch.device) -> tuple[Generator, E4EEncoder,
                                                            dict[str, Any]]:
    gpath, epath = _tiny_paths(store)
    g = e = None
    if _tiny_current(gpath, TINY_GENERATOR_KWARGS) and \
            _tiny_current(epath, TINY_ENCODER_KWARGS):
        try:
            g = load_network(gpath, expect="Generator")
            e = load_network(epath, expect="E4EEncoder")
        except (ModelFormatError, ModelMissing) as exc:
            log.warning("tiny models in %s are damaged (%s); rebuilding",
                        store.tiny_dir, exc)
            g = e = None
    if g is None or e is None:
        log.info("building the tiny test models (seed %d) into %s", TINY_SEED,
                 store.tiny_dir)
        g, e = build_tiny(TINY_SEED)
        info = {"tiny": True, "seed": TINY_SEED, "label": TINY_LABEL}
        save_network(g, gpath, info=info)
        save_network(e, epath, info=info)
    files = {}
    for role, p in (("generator", gpath), ("encoder", epath)):
        files[role] = {"path": str(p), "sha256": read_network_meta(p)["sha256"],
                       "format": "facestitch"}
    return (g.to(device).eval().requires_grad_(False),  # type: ignore[return-value]
            e.to(device).eval().requires_grad_(False), files)


def _tiny_lpips() -> tuple[LPIPS, str]:
    try:
        return LPIPS("alex", backbone="random", heads="pretrained", seed=TINY_SEED), \
            "lpips v0.1 alex heads (calibrated) on a random seeded backbone - test only"
    except ModelMissing:
        return LPIPS("alex", backbone="random", heads="uniform", seed=TINY_SEED), \
            "uniform heads on a random seeded backbone (no lpips package) - test only"


# --- official -----------------------------------------------------------------------


def _file_info(store: Store, name: str, path: Path) -> dict[str, Any]:
    rec = store.records()["files"].get(name) or {}
    if not rec.get("sha256") and path.is_file():  # placed by hand: hash once, cached
        rec = {"sha256": store.cached_sha256(path)}
    try:
        lic = manifest_entry(name, store.manifest).licence
    except ModelError:
        lic = None
    return {"path": str(path), "name": name, "sha256": rec.get("sha256"),
            "licence": LICENCES[lic].title if lic in LICENCES else lic}


def _user_generator(store: Store, ref: str | Path) -> tuple[Path, dict[str, Any]]:
    users = store.user_models()
    if str(ref) in users:
        rec = users[str(ref)]
        return Path(rec["path"]), {"name": str(ref), "path": rec["path"],
                                   "sha256": rec.get("sha256"), "user_model": True}
    p = Path(ref)
    if p.is_file():
        return p, {"name": p.name, "path": str(p), "sha256": None, "user_model": True}
    raise ModelMissing(f"generator {ref!r} is neither a registered model (see "
                       f"'facestitch models list') nor a file")


def load_models(profile: str = "auto", device: str | torch.device = "cpu", *,
                generator: str | Path | None = None,
                store: Store | None = None) -> ModelSet:
    """Load a profile's networks onto ``device`` (eval mode, no gradients on weights).

    Args:
        profile: "auto" | "official" | "tiny".
        device: torch device or "auto".
        generator: optional user generator (a name registered with
            ``facestitch models add`` or a path) replacing the profile's one; it must
            match the encoder's ``num_ws``/``w_dim``.
        store: model store (default ``$FACESTITCH_HOME``).

    Raises:
        ModelMissing: "official" requested and a file is missing (the message names
            the files and the commands that install them).
    """
    store = store or Store()
    dev = torch.device(resolve_device(device))
    requested = profile
    resolved = resolve_profile(profile, store)
    missing = store.official_missing() if requested == "auto" else []
    info: dict[str, Any] = {"profile": resolved, "requested_profile": requested,
                            "auto_fallback": requested == "auto" and resolved == "tiny",
                            "missing": missing}
    if resolved == "tiny":
        g, e, files = _load_tiny(store, dev)
        lp, lp_note = _tiny_lpips()
        files["lpips"] = {"source": lp_note, **lp.source}
        info.update(tiny=True, label=TINY_LABEL, files=files,
                    licences=["test data: no licence terms"])
        parser = store.installed("79999_iter.pth")
    else:
        missing = store.official_missing()
        if missing:
            raise ModelMissing(
                f"official model file(s) missing: {', '.join(missing)}. Install them "
                f"with 'facestitch models fetch --accept-licence' (files with a public "
                f"URL) or 'facestitch models install --from FOLDER --accept-licence'; "
                f"'facestitch models list' shows where each comes from")
        st = store.official_status()
        assert st["generator"] and st["encoder"] and st["lpips_backbone"]
        g = load_generator(st["generator"], device=dev)  # type: ignore[assignment]
        e = load_encoder(st["encoder"], device=dev)  # type: ignore[assignment]
        store.check_file("alexnet-owt-7be5be79.pth", st["lpips_backbone"])
        lp = LPIPS("alex", backbone_file=st["lpips_backbone"])
        files = {"generator": _file_info(store, st["generator"].name, st["generator"]),
                 "encoder": _file_info(store, st["encoder"].name, st["encoder"]),
                 "lpips_backbone": _file_info(store, st["lpips_backbone"].name,
                                              st["lpips_backbone"]),
                 "lpips_heads": {"path": lp.source.get("heads")}}
        parser = st["parser"]
        if parser:
            files["parser"] = _file_info(store, parser.name, parser)
        lic = sorted({f["licence"] for f in files.values() if f.get("licence")})
        info.update(tiny=False, label=OFFICIAL_LABEL, files=files, licences=lic)
    if generator is not None:
        gp, ginfo = _user_generator(store, generator)
        g = load_generator(gp, device=dev)  # type: ignore[assignment]
        if (g.num_ws, g.w_dim) != (e.num_ws, e.w_dim):  # type: ignore[union-attr]
            raise ModelFormatError(
                f"generator {generator} has {g.num_ws}x{g.w_dim} ws but the "
                f"{resolved} encoder produces {e.num_ws}x{e.w_dim}")  # type: ignore
        info["files"]["generator"] = ginfo
        info["label"] = f"{info['label']}; user generator {ginfo['name']}"
    directions = available_edits(resolved, store=store)
    info["directions"] = sorted(directions)
    if any(d.test_data for d in directions.values()):
        info["directions_test_data"] = True
    return ModelSet(profile=resolved, generator=g,  # type: ignore[arg-type]
                    encoder=e,
                    encoder_resolution=int(e.input_resolution),  # type: ignore
                    lpips=lp.to(dev), parser_path=parser, directions=directions,
                    info=info)


# --- kept between jobs --------------------------------------------------------------


def store_fingerprint(store: Store) -> tuple:
    """Size and modification time of every file of the store (partial downloads
    and the measured formulations in ``speed/`` aside: a job that records one
    changes no network) and of an LPIPS backbone in torch's hub folder: what
    :func:`cached_models` compares to know its networks are still the installed
    ones."""
    backbone = store.lpips_backbone_path()
    return files_fingerprint([store.home, *([backbone] if backbone else [])],
                             skip=("downloads", "speed"))


def cached_models(profile: str = "auto", device: str | torch.device = "cpu", *,
                  store: Store | None = None,
                  loader: Callable[[], ModelSet] | None = None) -> ModelSet:
    """:func:`load_models`, kept in this process between calls (drafts) until a
    file of the store changes (:mod:`engine.models.cache`). Callers must not
    modify the networks they get.

    Args:
        loader: what a miss loads instead of ``load_models(profile, device)``
            (``bench/pipeline.py --draft`` seeds official-size random networks).
    """
    store = store or Store()
    dev = str(torch.device(resolve_device(device)))
    key = ("models", str(store.home.absolute()), profile, dev)
    return cached(key, lambda: store_fingerprint(store),
                  loader or (lambda: load_models(profile, dev, store=store)))
