"""Our own checkpoint format: ``NAME.pt`` = ``torch.save`` of a plain
``{name: tensor}`` dict (loaded with ``weights_only=True``) + ``NAME.json`` =
``facestitch.Network/1`` with the class, the constructor kwargs, the file's sha256
and free-form ``info``. No code is ever pickled.

Example (a PTI-tuned generator)::

    save_network(G, stage_dir / "generator.pt", info={"pivots": "pivots.npy"})
    G2 = load_network(stage_dir / "generator.pt", device="cuda")  # a Generator
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from engine.models.formats.safe_load import safe_torch_load
from fsexchange.errors import ModelFormatError, ModelMissing
from fsexchange.fsutil import atomic_write_bytes


NETWORK_FORMAT = "facestitch.Network/1"


def _network_classes() -> dict[str, type[nn.Module]]:
    from engine.nets.e4e import E4EEncoder
    from engine.nets.lpips import LPIPS
    from engine.nets.stylegan2 import Generator

    return {"Generator": Generator, "E4EEncoder": E4EEncoder, "LPIPS": LPIPS}


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def save_network(module: nn.Module, path: str | Path, *,
                 info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``module`` in our format: ``path`` (tensors) + ``path.json`` (meta).

    ``module`` must be one of our networks (it carries ``init_kwargs``). Both files
    are written atomically, tensors first, so a present ``.json`` always describes a
    complete ``.pt``. Returns the metadata written.
    """
    path = Path(path)
    name = type(module).__name__
    if name not in _network_classes() or not hasattr(module, "init_kwargs"):
        raise ModelFormatError(f"cannot save a {name}: not a FaceStitch network")
    tensors = {k: v.detach().to("cpu").contiguous().clone()
               for k, v in module.state_dict().items()}
    buf = io.BytesIO()
    torch.save(tensors, buf)
    data = buf.getvalue()
    meta = {
        "format": NETWORK_FORMAT,
        "class": name,
        "init_kwargs": module.init_kwargs,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "tensors": len(tensors),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "info": dict(info or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    atomic_write_bytes(_sidecar(path), json.dumps(meta, indent=2,
                                                  default=str).encode("utf-8"))
    return meta


def read_network_meta(path: str | Path) -> dict[str, Any]:
    """The ``facestitch.Network/1`` sidecar of ``path`` (validated)."""
    side = _sidecar(Path(path))
    try:
        meta = json.loads(side.read_text("utf-8"))
    except FileNotFoundError as exc:
        raise ModelMissing(f"checkpoint metadata {side} is missing") from exc
    except ValueError as exc:
        raise ModelFormatError(f"{side} is not JSON: {exc}") from exc
    fmt = str(meta.get("format", ""))
    if fmt != NETWORK_FORMAT:
        raise ModelFormatError(f"{side}: format {fmt!r}; this version reads "
                               f"{NETWORK_FORMAT}")
    if meta.get("class") not in _network_classes():
        raise ModelFormatError(f"{side}: unknown network class {meta.get('class')!r}")
    return meta


def load_network(path: str | Path, *, device: str | torch.device = "cpu",
                 expect: str | None = None, verify: bool = True) -> nn.Module:
    """Load a network saved by :func:`save_network` (eval mode, on ``device``).

    Args:
        expect: class name the file must hold ("Generator", "E4EEncoder", "LPIPS").
        verify: check the tensor file's sha256 against the sidecar.
    """
    path = Path(path)
    meta = read_network_meta(path)
    if expect is not None and meta["class"] != expect:
        raise ModelFormatError(f"{path} holds a {meta['class']}, not a {expect}")
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ModelMissing(f"checkpoint {path} is missing") from exc
    if verify and hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise ModelFormatError(f"{path}: content hash differs from "
                               f"{_sidecar(path).name}; the file is damaged or was "
                               f"replaced")
    sd = safe_torch_load(io.BytesIO(data), what=str(path))
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ModelFormatError(f"{path} is not a plain dict of tensors")
    cls = _network_classes()[meta["class"]]
    kwargs = dict(meta.get("init_kwargs") or {})
    if meta["class"] == "LPIPS":  # every tensor comes from the file
        kwargs.update(backbone="random", heads="uniform")
        net = cls(**kwargs)
        _load_strict(net, sd, str(path))
    else:
        net = _materialise(cls, kwargs, sd, str(path))
    return net.to(device).eval()


def _load_strict(net: nn.Module, sd: Mapping[str, Tensor], what: str,
                 assign: bool = False) -> None:
    try:
        net.load_state_dict(dict(sd), strict=True, assign=assign)
    except RuntimeError as exc:
        raise ModelFormatError(f"{what}: tensors do not fit the network: "
                               f"{str(exc)[:800]}") from exc


def _materialise(cls: type[nn.Module], kwargs: Mapping[str, Any],
                 sd: Mapping[str, Tensor], what: str) -> nn.Module:
    """Build ``cls`` on the meta device and adopt the loaded tensors (strict): no
    random initialisation, no second copy of the weights."""
    with torch.device("meta"):
        net = cls(**dict(kwargs))
    _load_strict(net, {k: v.contiguous() for k, v in sd.items()}, what, assign=True)
    left = [n for n, t in list(net.named_parameters()) + list(net.named_buffers())
            if t.is_meta]
    if left:
        raise ModelFormatError(f"{what}: no tensors for {', '.join(left[:5])}")
    return net
