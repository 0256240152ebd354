"""Checkpoint readers and our own checkpoint format. Weights are data, never code.

Readers (checkpoints.md):

- NVIDIA stylegan2-ada-pytorch ``.pkl`` (§1): an allow-listed unpickler rebuilds the
  tensors and the persistent-object records **without executing** the embedded
  ``module_src``; anything outside the allow list raises :class:`ModelUnsafe` naming
  the ``(module, name)`` pair. ``torch.storage._load_from_bytes`` is replaced by a
  ``weights_only`` load of the inner bytes.
- rosinality StyleGAN2 ``.pt`` (§2): ``weights_only`` load, keys converted to
  NVIDIA's ``G_ema`` names.
- e4e ``.pt`` (§3): encoder keys + ``latent_avg`` only; a numpy scalar global (or
  argparse.Namespace in training checkpoints) is admitted explicitly, nothing else.
- BiSeNet ``.pth`` (§4): plain state dict, ``weights_only``.
- Ours: ``NAME.pt`` = ``torch.save`` of a plain ``{name: tensor}`` dict (loaded with
  ``weights_only=True``) + ``NAME.json`` = ``facestitch.Network/1`` with the class,
  the constructor kwargs, the file's sha256 and free-form ``info``.

Example (a PTI-tuned generator)::

    save_network(G, stage_dir / "generator.pt", info={"pivots": "pivots.npy"})
    G2 = load_network(stage_dir / "generator.pt", device="cuda")  # a Generator
"""

from __future__ import annotations

import codecs
import collections
import datetime as _dt
import hashlib
import importlib
import io
import json
import logging
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from fsexchange.errors import ModelFormatError, ModelMissing, ModelUnsafe
from fsexchange.fsutil import atomic_write_bytes

from engine.nets.ops import setup_filter

__all__ = [
    "NETWORK_FORMAT",
    "save_network",
    "load_network",
    "read_network_meta",
    "PersistentRecord",
    "read_nvidia_pickle",
    "nvidia_generator_state",
    "generator_kwargs_from_nvidia",
    "rosinality_to_nvidia",
    "nvidia_to_rosinality",
    "read_rosinality",
    "read_e4e",
    "safe_torch_load",
    "read_bisenet_state",
    "sniff_format",
    "load_generator",
    "load_encoder",
    "inspect_checkpoint",
]

log = logging.getLogger(__name__)

NETWORK_FORMAT = "facestitch.Network/1"


# --- our own format ---------------------------------------------------------------


def _network_classes() -> dict[str, type[nn.Module]]:
    from engine.nets.e4e import E4EEncoder  # noqa: PLC0415
    from engine.nets.lpips import LPIPS  # noqa: PLC0415
    from engine.nets.stylegan2 import Generator  # noqa: PLC0415

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
        "init_kwargs": getattr(module, "init_kwargs"),
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


# --- weights_only torch.load with a tiny explicit allowance -----------------------

#: Globals admitted on top of torch's weights_only set, by checkpoint kind.
_NUMPY_SCALAR = (
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype",
    "numpy.dtypes.Float64DType", "numpy.dtypes.Float32DType",
    "numpy.dtypes.Int64DType", "numpy.dtypes.Int32DType", "numpy.dtypes.BoolDType",
)
_ARGPARSE = ("argparse.Namespace",)


def _numpy_dtype_classes() -> list[Any]:
    import numpy as np  # noqa: PLC0415

    names = ("Float64DType", "Float32DType", "Float16DType", "Int64DType",
             "Int32DType", "Int16DType", "Int8DType", "UInt8DType", "BoolDType")
    return [getattr(np.dtypes, n) for n in names if hasattr(np, "dtypes")
            and hasattr(np.dtypes, n)]


def _resolve_global(qualname: str) -> Any:
    module, _, name = qualname.rpartition(".")
    return getattr(importlib.import_module(module), name)


def safe_torch_load(src: str | Path | io.BytesIO, *, allow: tuple[str, ...] = (),
                    what: str | None = None, mmap: bool = False) -> Any:
    """``torch.load(weights_only=True, map_location="cpu")``; globals outside torch's
    safe set are refused (:class:`ModelUnsafe`) unless named in ``allow``."""
    what = what or str(src)
    extra: list[Any] = []
    if allow and isinstance(src, (str, Path)):
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(src)
        except Exception:  # noqa: BLE001 - legacy (non-zip) files: just try below
            unsafe = []
        blocked = [g for g in unsafe if g not in allow]
        if blocked:
            raise ModelUnsafe(f"{what} needs Python globals outside the allow list: "
                              f"{', '.join(blocked)}; refusing to load it")
        extra = [_resolve_global(g) for g in unsafe]
        if any(g.startswith("numpy.") for g in unsafe):
            # rebuilding a numpy scalar BUILDs its dtype, whose class torch checks too
            extra += _numpy_dtype_classes()
    try:
        with torch.serialization.safe_globals(extra):
            kwargs: dict[str, Any] = dict(map_location="cpu", weights_only=True)
            if mmap and isinstance(src, (str, Path)):
                kwargs["mmap"] = True
            try:
                return torch.load(src, **kwargs)
            except RuntimeError as exc:
                if "mmap" in kwargs and "mmap" in str(exc):
                    kwargs.pop("mmap")
                    return torch.load(src, **kwargs)
                raise
    except pickle.UnpicklingError as exc:
        raise ModelUnsafe(f"{what} cannot be read as weights only (it would need to "
                          f"run code): {str(exc).splitlines()[0][:300]}") from exc
    except FileNotFoundError as exc:
        raise ModelMissing(f"{what} not found") from exc
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise ModelFormatError(f"{what} is not a readable torch file: {exc}") from exc


# --- NVIDIA pickle ----------------------------------------------------------------


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
        import numpy as np  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        return {}
    try:
        from numpy._core import multiarray as ma  # noqa: PLC0415
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
    import torch._utils as tu  # noqa: PLC0415

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
            import _compat_pickle  # noqa: PLC0415

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
    """Our ``Generator`` kwargs from NVIDIA's ``_init_kwargs`` (checkpoints.md
    §1.3)."""
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


# --- rosinality -------------------------------------------------------------------


def _squeeze0(t: Tensor) -> Tensor:
    return t.reshape(t.shape[1:]) if t.ndim and t.shape[0] == 1 else t


def rosinality_to_nvidia(g: Mapping[str, Tensor], latent_avg: Tensor | None
                         ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Convert a rosinality ``g_ema`` state dict (checkpoints.md §2 table).

    Returns our state dict and ``Generator`` kwargs (inferred from the shapes).
    Every rosinality key must be used, or :class:`ModelFormatError` is raised.
    """
    g = dict(g)
    used: set[str] = set()

    def take(k: str) -> Tensor:
        if k not in g:
            raise ModelFormatError(f"rosinality state dict lacks {k}")
        used.add(k)
        return g[k]

    n_mlp = 0
    while f"style.{n_mlp + 1}.weight" in g:
        n_mlp += 1
    n_rgbs = 0
    while f"to_rgbs.{n_rgbs}.conv.weight" in g:
        n_rgbs += 1
    if n_mlp == 0 or "input.input" not in g:
        raise ModelFormatError("not a rosinality StyleGAN2 generator state dict")
    log2 = n_rgbs + 2
    res = 2 ** log2
    out: dict[str, Tensor] = {}
    for i in range(n_mlp):
        out[f"mapping.fc{i}.weight"] = take(f"style.{i + 1}.weight")
        out[f"mapping.fc{i}.bias"] = take(f"style.{i + 1}.bias")
    w_dim = out["mapping.fc0.weight"].shape[0]
    z_dim = out["mapping.fc0.weight"].shape[1]
    if latent_avg is None:
        log.warning("rosinality checkpoint without latent_avg: w_avg = 0 (truncation "
                    "will pull towards 0)")
        latent_avg = torch.zeros(w_dim)
    out["mapping.w_avg"] = latent_avg.reshape(-1, w_dim)[0].float()

    default_f = None
    for k in g:
        if k.endswith("blur.kernel") or k.endswith("upsample.kernel"):
            default_f = g[k] / 4.0  # rosinality bakes the x4 up-sampling gain in
            break
    if default_f is None:
        default_f = setup_filter([1, 3, 3, 1])

    def conv(prefix: str, dst: str, noise_key: str, up: bool) -> None:
        out[f"{dst}.weight"] = _squeeze0(take(f"{prefix}.conv.weight"))
        out[f"{dst}.affine.weight"] = take(f"{prefix}.conv.modulation.weight")
        out[f"{dst}.affine.bias"] = take(f"{prefix}.conv.modulation.bias")
        out[f"{dst}.noise_strength"] = take(f"{prefix}.noise.weight").reshape([])
        out[f"{dst}.bias"] = take(f"{prefix}.activate.bias")
        out[f"{dst}.noise_const"] = take(noise_key).reshape(take(noise_key).shape[-2:])
        out[f"{dst}.resample_filter"] = (take(f"{prefix}.conv.blur.kernel") / 4.0
                                         if up else default_f.clone())

    def torgb(prefix: str, dst: str) -> None:
        out[f"{dst}.weight"] = _squeeze0(take(f"{prefix}.conv.weight"))
        out[f"{dst}.affine.weight"] = take(f"{prefix}.conv.modulation.weight")
        out[f"{dst}.affine.bias"] = take(f"{prefix}.conv.modulation.bias")
        out[f"{dst}.bias"] = take(f"{prefix}.bias").reshape(-1)

    out["synthesis.b4.const"] = _squeeze0(take("input.input"))
    out["synthesis.b4.resample_filter"] = default_f.clone()
    conv("conv1", "synthesis.b4.conv1", "noises.noise_0", up=False)
    torgb("to_rgb1", "synthesis.b4.torgb")
    channels = {4: out["synthesis.b4.const"].shape[0]}
    for j in range(3, log2 + 1):
        r = 2 ** j
        for c in (0, 1):
            k = 2 * (j - 3) + c
            conv(f"convs.{k}", f"synthesis.b{r}.conv{c}", f"noises.noise_{k + 1}",
                 up=(c == 0))
        torgb(f"to_rgbs.{j - 3}", f"synthesis.b{r}.torgb")
        up_key = f"to_rgbs.{j - 3}.upsample.kernel"
        out[f"synthesis.b{r}.resample_filter"] = (take(up_key) / 4.0 if up_key in g
                                                  else default_f.clone())
        channels[r] = out[f"synthesis.b{r}.conv1.weight"].shape[0]
    extra = sorted(set(g) - used)
    if extra:
        raise ModelFormatError(f"rosinality state dict has keys we do not understand: "
                               f"{', '.join(extra[:8])}")
    cmax = max(channels.values())
    cbase = channels[res] * res
    if any(min(cbase // r, cmax) != c for r, c in channels.items()):
        raise ModelFormatError(f"channel widths {channels} do not follow "
                               f"min(base / r, max)")
    kwargs = dict(z_dim=int(z_dim), w_dim=int(w_dim), img_resolution=res,
                  img_channels=int(out["synthesis.b4.torgb.weight"].shape[0]),
                  channel_base=int(cbase), channel_max=int(cmax), mapping_layers=n_mlp,
                  mapping_lr_mul=0.01, conv_clamp=None,
                  resample_filter=[1.0, 3.0, 3.0, 1.0], use_noise=True,
                  w_avg_beta=0.995)
    return out, kwargs


def nvidia_to_rosinality(sd: Mapping[str, Tensor], num_mapping: int,
                         resolution: int) -> tuple[dict[str, Tensor], Tensor]:
    """Inverse of :func:`rosinality_to_nvidia`: (``g_ema`` dict, ``latent_avg``)."""
    g: dict[str, Tensor] = {}
    for i in range(num_mapping):
        g[f"style.{i + 1}.weight"] = sd[f"mapping.fc{i}.weight"].clone()
        g[f"style.{i + 1}.bias"] = sd[f"mapping.fc{i}.bias"].clone()
    g["input.input"] = sd["synthesis.b4.const"][None].clone()

    def conv(src: str, dst: str, noise_key: str, up: bool) -> None:
        g[f"{dst}.conv.weight"] = sd[f"{src}.weight"][None].clone()
        g[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"].clone()
        g[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"].clone()
        g[f"{dst}.noise.weight"] = sd[f"{src}.noise_strength"].reshape(1).clone()
        g[f"{dst}.activate.bias"] = sd[f"{src}.bias"].clone()
        g[noise_key] = sd[f"{src}.noise_const"][None, None].clone()
        if up:
            g[f"{dst}.conv.blur.kernel"] = sd[f"{src}.resample_filter"] * 4.0

    def torgb(src: str, dst: str, up_filter: Tensor | None) -> None:
        g[f"{dst}.conv.weight"] = sd[f"{src}.weight"][None].clone()
        g[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"].clone()
        g[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"].clone()
        g[f"{dst}.bias"] = sd[f"{src}.bias"].reshape(1, -1, 1, 1).clone()
        if up_filter is not None:
            g[f"{dst}.upsample.kernel"] = up_filter * 4.0

    conv("synthesis.b4.conv1", "conv1", "noises.noise_0", False)
    torgb("synthesis.b4.torgb", "to_rgb1", None)
    for j in range(3, int(round(math.log2(resolution))) + 1):
        r = 2 ** j
        for c in (0, 1):
            k = 2 * (j - 3) + c
            conv(f"synthesis.b{r}.conv{c}", f"convs.{k}", f"noises.noise_{k + 1}",
                 c == 0)
        torgb(f"synthesis.b{r}.torgb", f"to_rgbs.{j - 3}",
              sd[f"synthesis.b{r}.resample_filter"])
    return g, sd["mapping.w_avg"].clone()


def read_rosinality(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(our state dict, Generator kwargs) from a rosinality ``.pt``."""
    obj = safe_torch_load(path, allow=_ARGPARSE + _NUMPY_SCALAR, mmap=True)
    if not isinstance(obj, dict) or "g_ema" not in obj:
        raise ModelFormatError(f"{path} has no g_ema generator (rosinality layout)")
    la = obj.get("latent_avg")
    return rosinality_to_nvidia(obj["g_ema"], la if isinstance(la, Tensor) else None)


# --- e4e ----------------------------------------------------------------------------


def encoder_kwargs_from_state(sd: Mapping[str, Tensor],
                              input_resolution: int | None = None) -> dict[str, Any]:
    """Infer ``E4EEncoder`` kwargs from its (unprefixed) state dict.

    Stages are told apart by their widths (IR-SE-50: 64, 128, 256, 512), so two
    consecutive stages of equal width cannot be inferred; save such encoders in our
    own format instead."""
    if "input_layer.0.weight" not in sd or "styles.0.linear.weight" not in sd:
        raise ModelFormatError("not an e4e encoder state dict")
    units: list[int] = []
    widths: list[int] = []
    i = 0
    se = 16
    while f"body.{i}.res_layer.1.weight" in sd:
        depth = sd[f"body.{i}.res_layer.1.weight"].shape[0]
        se = depth // sd[f"body.{i}.res_layer.5.fc1.weight"].shape[0]
        if widths and widths[-1] == depth:
            units[-1] += 1
        else:
            widths.append(depth)
            units.append(1)
        i += 1
    if len(units) != 4:
        raise ModelFormatError(f"expected 4 IR-SE stages, found widths {widths}")
    num_ws = 0
    convs: list[int] = []
    while f"styles.{num_ws}.linear.weight" in sd:
        n = 0
        while f"styles.{num_ws}.convs.{2 * n}.weight" in sd:
            n += 1
        convs.append(n)
        num_ws += 1
    n0 = convs[0]
    coarse = sum(1 for c in convs if c == n0)
    middle = coarse + sum(1 for c in convs if c == n0 + 1)
    res = input_resolution or 16 * 2 ** n0
    return dict(num_ws=num_ws, w_dim=int(sd["styles.0.linear.weight"].shape[0]),
                input_resolution=int(res), stage_units=units, stage_widths=widths,
                input_width=int(sd["input_layer.0.weight"].shape[0]),
                coarse_index=coarse, middle_index=middle, se_reduction=int(se))


def read_e4e(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(encoder state dict incl. ``latent_avg``, E4EEncoder kwargs) from an e4e
    ``.pt``; the decoder and training state are dropped."""
    obj = safe_torch_load(path, allow=_NUMPY_SCALAR + _ARGPARSE, mmap=True)
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise ModelFormatError(f"{path} is not an e4e/pSp checkpoint (no state_dict)")
    opts = obj.get("opts") or {}
    if isinstance(opts, dict) and opts.get("encoder_type", "Encoder4Editing") != \
            "Encoder4Editing":
        raise ModelFormatError(f"{path}: encoder_type {opts.get('encoder_type')!r} is "
                               f"not supported (only Encoder4Editing)")
    sd = {k[len("encoder."):]: v for k, v in obj["state_dict"].items()
          if k.startswith("encoder.")}
    if not sd:
        raise ModelFormatError(f"{path} has no encoder.* tensors")
    kwargs = encoder_kwargs_from_state(sd)
    la = obj.get("latent_avg")
    n, w = kwargs["num_ws"], kwargs["w_dim"]
    if isinstance(la, Tensor):
        la = la.float().reshape(-1, w)
        la = la.expand(n, w).clone() if la.shape[0] == 1 else la
    else:
        log.warning("%s has no latent_avg; using zeros", path)
        la = torch.zeros(n, w)
    sd["latent_avg"] = la
    return sd, kwargs


# --- BiSeNet ------------------------------------------------------------------------


def read_bisenet_state(path: str | Path) -> dict[str, Tensor]:
    """``79999_iter.pth`` as a plain state dict (``module.`` prefixes stripped)."""
    sd = safe_torch_load(path)
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ModelFormatError(f"{path} is not a plain BiSeNet state dict")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if "cp.resnet.conv1.weight" not in sd or "conv_out.conv_out.weight" not in sd:
        raise ModelFormatError(f"{path} does not look like a BiSeNet face parser "
                               f"(no cp.resnet.conv1 / conv_out)")
    return sd


# --- dispatch -----------------------------------------------------------------------

_LEGACY_TORCH_MAGIC = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


def sniff_format(path: str | Path) -> str:
    """"facestitch" | "torch-zip" | "torch-legacy" | "pickle" | "npy" | "unknown"."""
    path = Path(path)
    if not path.is_file():
        raise ModelMissing(f"{path} not found")
    side = _sidecar(path)
    if side.is_file():
        try:
            if json.loads(side.read_text("utf-8")).get("format") == NETWORK_FORMAT:
                return "facestitch"
        except (ValueError, OSError, AttributeError):
            pass
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head[:1] == b"\x80" and head[2:14] == _LEGACY_TORCH_MAGIC:
        return "torch-legacy"
    if head[:1] == b"\x80":
        return "pickle"
    return "unknown"


def _build_generator(sd: Mapping[str, Tensor], kwargs: Mapping[str, Any], what: str,
                     device: str | torch.device) -> nn.Module:
    from engine.nets.stylegan2 import Generator  # noqa: PLC0415

    g = _materialise(Generator, kwargs, {k: v.float() for k, v in sd.items()}, what)
    return g.to(device).eval().requires_grad_(False)


def load_generator(path: str | Path, *,
                   device: str | torch.device = "cpu") -> nn.Module:
    """A ``Generator`` from an NVIDIA ``.pkl``, a rosinality ``.pt`` or our format."""
    path = Path(path)
    fmt = sniff_format(path)
    if fmt == "facestitch":
        return load_network(path, device=device, expect="Generator")
    if fmt == "pickle":
        sd, raw = nvidia_generator_state(read_nvidia_pickle(path))
        return _build_generator(sd, generator_kwargs_from_nvidia(raw), str(path),
                                device)
    if fmt in ("torch-zip", "torch-legacy"):
        sd, kwargs = read_rosinality(path)
        return _build_generator(sd, kwargs, str(path), device)
    raise ModelFormatError(f"{path}: not a StyleGAN2 checkpoint we can read "
                           f"(format {fmt})")


def load_encoder(path: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """An ``E4EEncoder`` from an e4e ``.pt`` or our format."""
    from engine.nets.e4e import E4EEncoder  # noqa: PLC0415

    path = Path(path)
    fmt = sniff_format(path)
    if fmt == "facestitch":
        return load_network(path, device=device, expect="E4EEncoder")
    if fmt not in ("torch-zip", "torch-legacy"):
        raise ModelFormatError(f"{path}: not an e4e checkpoint (format {fmt})")
    sd, kwargs = read_e4e(path)
    enc = _materialise(E4EEncoder, kwargs, {k: v.float() if v.is_floating_point()
                                            else v for k, v in sd.items()}, str(path))
    return enc.to(device).eval().requires_grad_(False)


def inspect_checkpoint(path: str | Path) -> dict[str, Any]:
    """Identify a checkpoint with the safe loaders only and check that it builds.

    Returns ``{"kind": "generator"|"encoder"|"parser"|"lpips"|"direction",
    "format": ..., "config": {...}, ...}``; raises :class:`ModelUnsafe` for files
    that would need code to load, :class:`ModelFormatError` for anything else we
    cannot read.
    """
    path = Path(path)
    fmt = sniff_format(path)
    if fmt == "facestitch":
        meta = read_network_meta(path)
        net = load_network(path)
        kind = {"Generator": "generator", "E4EEncoder": "encoder",
                "LPIPS": "lpips"}[meta["class"]]
        return _describe(kind, "facestitch", net, meta.get("init_kwargs", {}))
    if fmt == "npy":
        from engine.models.directions import load_direction  # noqa: PLC0415

        d = load_direction(path)
        return {"kind": "direction", "format": "npy", "config": d.to_dict()}
    if fmt == "pickle":
        sd, raw = nvidia_generator_state(read_nvidia_pickle(path))
        kwargs = generator_kwargs_from_nvidia(raw)
        g = _build_generator(sd, kwargs, str(path), "cpu")
        return _describe("generator", "nvidia-pkl", g, kwargs)
    if fmt in ("torch-zip", "torch-legacy"):
        obj = safe_torch_load(path, allow=_ARGPARSE + _NUMPY_SCALAR, mmap=True)
        if isinstance(obj, dict) and "g_ema" in obj:
            sd, kwargs = read_rosinality(path)
            return _describe("generator", "rosinality",
                             _build_generator(sd, kwargs, str(path), "cpu"), kwargs)
        if isinstance(obj, dict) and "state_dict" in obj:
            enc = load_encoder(path)
            return _describe("encoder", "e4e", enc, getattr(enc, "init_kwargs", {}))
        if isinstance(obj, dict) and "cp.resnet.conv1.weight" in obj:
            sd = read_bisenet_state(path)
            n_cls = int(sd["conv_out.conv_out.weight"].shape[0])
            return {"kind": "parser", "format": "bisenet",
                    "config": {"classes": n_cls}, "tensors": len(sd)}
        raise ModelFormatError(f"{path}: a torch file, but not a generator, e4e "
                               f"encoder or BiSeNet parser we recognise")
    raise ModelFormatError(f"{path}: unrecognised file format")


def _describe(kind: str, fmt: str, net: nn.Module, kwargs: Mapping[str, Any]
              ) -> dict[str, Any]:
    info: dict[str, Any] = {"kind": kind, "format": fmt, "config": dict(kwargs),
                            "parameters": int(sum(p.numel() for p in net.parameters()))}
    for attr in ("num_ws", "w_dim", "img_resolution", "input_resolution"):
        if hasattr(net, attr):
            info[attr] = getattr(net, attr)
    return info

