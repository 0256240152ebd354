"""NVIDIA stylegan2-ada-pytorch ``.pkl`` (see docs/models.md): an allow-listed
unpickler rebuilds the tensors and the persistent-object records **without
executing** the embedded ``module_src``; anything outside the allow list raises
:class:`ModelUnsafe` naming the ``(module, name)`` pair.
``torch.storage._load_from_bytes`` is replaced by a ``weights_only`` load of the
inner bytes.
"""

from __future__ import annotations

import codecs
import collections
import hashlib
import io
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from fsexchange.errors import ModelFormatError, ModelMissing, ModelUnsafe

log = logging.getLogger(__name__)


@dataclass
class PersistentRecord:
    """What ``torch_utils.persistence._reconstruct_persistent_obj`` would rebuild,
    as data: the class name and the object's state. ``module_src`` is never run;
    only its hash is kept for the record."""

    class_name: str
    state: dict[str, Any]
    version: int | None = None
    module_src_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _persistent_record(meta: Any) -> PersistentRecord:
    if not isinstance(meta, dict) or meta.get("type") != "class":
        kind = meta.get("type") if isinstance(meta, dict) else type(meta).__name__
        raise ModelFormatError(f"persistent object record of an unsupported type "
                               f"({kind!r})")
    src = meta.get("module_src")
    state = meta.get("state")
    if not isinstance(state, dict):
        raise ModelFormatError(f"persistent object {meta.get('class_name')} has no "
                               f"state dict")
    return PersistentRecord(
        class_name=str(meta.get("class_name")), state=state,
        version=meta.get("version"),
        module_src_sha256=(hashlib.sha256(src.encode("utf-8")).hexdigest()
                           if isinstance(src, str) else None))


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: a dict with attribute access."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc


def _safe_load_from_bytes(b: bytes) -> Any:
    """Replacement for ``torch.storage._load_from_bytes``: weights only, CPU."""
    try:
        return torch.load(io.BytesIO(b), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelUnsafe("an embedded tensor storage would need to run code to "
                          f"load: {str(exc).splitlines()[0][:300]}") from exc


def _numpy_pairs() -> dict[tuple[str, str], Any]:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return {}
    try:
        from numpy._core import multiarray as ma
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray as ma  # type: ignore[no-redef]  # noqa
    out: dict[tuple[str, str], Any] = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(mod, "_reconstruct")] = ma._reconstruct
        out[(mod, "scalar")] = ma.scalar
    out[("numpy", "ndarray")] = np.ndarray
    out[("numpy", "dtype")] = np.dtype
    return out


def _allowed_pairs() -> dict[tuple[str, str], Any]:
    import torch._utils as tu

    pairs: dict[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor_v2"): tu._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): tu._rebuild_parameter,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch.storage", "_load_from_bytes"): _safe_load_from_bytes,
        ("_codecs", "encode"): codecs.encode,  # protocol 2 stores bytes as latin-1
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_record,
        ("dnnlib.util", "EasyDict"): EasyDict,
        ("dnnlib", "EasyDict"): EasyDict,
    }
    for opt in ("_rebuild_tensor_v3", "_rebuild_parameter_with_state"):
        if hasattr(tu, opt):
            pairs[("torch._utils", opt)] = getattr(tu, opt)
    for dt in ("float32", "float16", "bfloat16", "float64", "int64", "int32",
               "uint8", "int8", "bool"):
        pairs[("torch", dt)] = getattr(torch, dt)
    pairs.update(_numpy_pairs())
    return pairs


class _AllowListUnpickler(pickle.Unpickler):
    def __init__(self, fh: Any, allowed: dict[tuple[str, str], Any], what: str):
        super().__init__(fh)
        self._allowed = allowed
        self._what = what

    def find_class(self, module: str, name: str) -> Any:
        obj = self._allowed.get((module, name))
        if obj is None:  # protocol 0-2 pickles use Python 2 names (__builtin__.set)
            import _compat_pickle

            default = (_compat_pickle.IMPORT_MAPPING.get(module, module), name)
            mod2, name2 = _compat_pickle.NAME_MAPPING.get((module, name), default)
            obj = self._allowed.get((mod2, name2))
        if obj is None:
            raise ModelUnsafe(
                f"{self._what} refers to ({module!r}, {name!r}), which is not on the "
                f"allow list of the safe unpickler; it was not loaded (nothing in it "
                f"ran). If the file is trustworthy, report the pair for review.")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise ModelUnsafe(f"{self._what}: unexpected persistent id in a plain pickle")


def read_nvidia_pickle(path: str | Path) -> dict[str, Any]:
    """Unpickle an NVIDIA network pickle as data (records + tensors), running nothing.

    Returns the top-level dict (``G``, ``D``, ``G_ema``, ... as
    :class:`PersistentRecord`).
    """
    path = Path(path)
    try:
        fh = open(path, "rb")
    except FileNotFoundError as exc:
        raise ModelMissing(f"{path} not found") from exc
    with fh:
        try:
            data = _AllowListUnpickler(fh, _allowed_pairs(), str(path)).load()
        except (ModelUnsafe, ModelFormatError):
            raise
        except Exception as exc:  # noqa: BLE001 - truncated or foreign pickles
            raise ModelFormatError(f"{path} is not a readable network pickle: "
                                   f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path}: top level is a {type(data).__name__}, not a "
                               f"dict of networks")
    return data


def _walk_record(rec: PersistentRecord, prefix: str, out: dict[str, Tensor]) -> None:
    st = rec.state
    skip = set(st.get("_non_persistent_buffers_set") or ())
    for key in ("_parameters", "_buffers"):
        for name, t in (st.get(key) or {}).items():
            if t is None or (key == "_buffers" and name in skip):
                continue
            if not isinstance(t, Tensor):
                raise ModelFormatError(f"{prefix}{name} is a {type(t).__name__}, not a "
                                       f"tensor")
            out[prefix + name] = t.detach()
    for name, child in (st.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentRecord):
            raise ModelFormatError(f"sub-module {prefix}{name} is not a persistent "
                                   f"record ({type(child).__name__})")
        _walk_record(child, f"{prefix}{name}.", out)


def nvidia_generator_state(data: Mapping[str, Any], key: str = "G_ema"
                           ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state dict, raw NVIDIA init kwargs) of ``data[key]`` from
    :func:`read_nvidia_pickle`."""
    rec = data.get(key)
    if not isinstance(rec, PersistentRecord):
        raise ModelFormatError(f"the pickle has no {key} network (keys: "
                               f"{', '.join(map(str, data))})")
    sd: dict[str, Tensor] = {}
    _walk_record(rec, "", sd)
    args = tuple(rec.state.get("_init_args") or ())
    kwargs = dict(rec.state.get("_init_kwargs") or {})
    names = ["z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"]
    raw = dict(zip(names, args))
    raw.update(kwargs)
    raw["_class_name"] = rec.class_name
    return sd, raw


def generator_kwargs_from_nvidia(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Our ``Generator`` kwargs from NVIDIA's ``_init_kwargs`` (docs/models.md,
    "Expected FFHQ-1024 configuration")."""
    cls = str(raw.get("_class_name", "training.networks.Generator"))
    if not cls.endswith("Generator"):
        raise ModelFormatError(f"G_ema is a {cls}, not a StyleGAN2 Generator")
    if int(raw.get("c_dim", 0) or 0) != 0:
        raise ModelFormatError("conditional generators (c_dim > 0) are not supported")
    mk = dict(raw.get("mapping_kwargs") or {})
    sk = dict(raw.get("synthesis_kwargs") or {})
    arch = sk.get("architecture", "skip")
    if arch != "skip":
        raise ModelFormatError(f"synthesis architecture {arch!r} is not supported "
                               f"(only 'skip', StyleGAN2 config F)")
    for kw, want in ((mk, "lrelu"), (sk, "lrelu")):
        if kw.get("activation", want) != want:
            raise ModelFormatError(f"activation {kw.get('activation')!r} unsupported")
    w_dim = int(raw["w_dim"])
    if mk.get("embed_features") not in (None, 0) or \
            mk.get("layer_features") not in (None, w_dim):
        raise ModelFormatError("mapping embed/layer features other than w_dim are not "
                               "supported")
    if sk.get("num_fp16_res", 0):
        log.info("num_fp16_res=%s in the pickle: we compute in float32",
                 sk.get("num_fp16_res"))
    known_s = {"channel_base", "channel_max", "num_fp16_res", "conv_clamp",
               "architecture", "resample_filter", "use_noise", "activation",
               "fp16_channels_last", "kernel_size"}
    unknown = set(sk) - known_s
    if unknown:
        log.warning("ignoring unknown synthesis kwargs %s", sorted(unknown))
    if int(sk.get("kernel_size", 3)) != 3:
        raise ModelFormatError("only 3x3 synthesis convs are supported")
    return dict(
        z_dim=int(raw["z_dim"]), w_dim=w_dim,
        img_resolution=int(raw["img_resolution"]),
        img_channels=int(raw.get("img_channels", 3)),
        channel_base=int(sk.get("channel_base", 32768)),
        channel_max=int(sk.get("channel_max", 512)),
        mapping_layers=int(mk.get("num_layers", 8)),
        mapping_lr_mul=float(mk.get("lr_multiplier", 0.01)),
        conv_clamp=(None if sk.get("conv_clamp") is None else float(sk["conv_clamp"])),
        resample_filter=[float(v) for v in sk.get("resample_filter", [1, 3, 3, 1])],
        use_noise=bool(sk.get("use_noise", True)),
        w_avg_beta=float(mk.get("w_avg_beta", 0.995)))
