"""Edit directions as data (numpy only, torch-free).

A direction is a ``.npy`` array (read with ``allow_pickle=False``) plus a JSON
sidecar of metadata, stored in ``<store>/directions/<profile>/<name>.npy|.json``.

- W space (``space="w"``): ``[w_dim]`` or ``[num_ws, w_dim]``. STIT's 16 published
  files are float64 ``[18, 512]`` with identical rows (docs/reference.md "Editing"). An
  edit of
  strength ``t`` (in STIT CLI units) is ``w + t * step_scale * v`` with
  ``step_scale = 0.5`` (STIT uses ``w + (t / 2) d``); ``layers`` restricts it to
  some ws indices.
- S space (``space="s"``): a 1-D vector over the conv layers' style channels
  (6048 at 1024 px; StyleCLIP global directions derived from ``fs3.npy``); ToRGB
  styles get zero. Edit: ``s_l + t * dir_l`` (``step_scale = 1``).

The tiny profile carries seeded synthetic directions under the usual names, marked
``test_data=True`` so every output that used them can say so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from fsexchange.errors import EditUnknown, ModelFormatError
from fsexchange.fsutil import atomic_write_bytes

if TYPE_CHECKING:
    from engine.models.store import ModelFile, Store

__all__ = [
    "Direction",
    "available_edits",
    "load_direction",
    "load_directions",
    "save_direction",
    "conv_style_channels",
    "ensure_tiny_directions",
    "install_direction",
    "OFFICIAL_RANGES",
    "DIRECTION_FORMAT",
]

log = logging.getLogger(__name__)

DIRECTION_FORMAT = "facestitch.Direction/1"

#: Recommended strength ranges (STIT CLI units) of the official W directions.
#: "published": README / issues (docs/reference.md "Editing"); "heuristic": chosen so
# that the
#: largest step (t/2)|d| is about 3 W units given the measured row norms.
OFFICIAL_RANGES: dict[str, tuple[float, float, str]] = {
    "age": (-8.0, 8.0, "published: young = age -8"),
    "gender": (-6.0, 6.0, "published: gender -6"),
    "smile": (-3.0, 3.0, "published: smile +2 or -3"),
    "mouth_open": (0.0, 30.0, "published: 25-30 (STIT issue #14)"),
    "yaw": (-6.0, 6.0, "heuristic (|d| 0.936)"),
    "pitch": (-10.0, 10.0, "heuristic (|d| 0.518)"),
    "roll": (-20.0, 20.0, "heuristic (|d| 0.279)"),
}
_DEFAULT_RANGE = (-20.0, 20.0, "heuristic (|d| about 0.21-0.30)")
#: STIT row-0 norms (docs/reference.md "Editing"); the tiny directions reuse them.
_NORMS = {"age": 0.731, "gender": 0.972, "smile": 1.007, "yaw": 0.936,
          "pitch": 0.518, "roll": 0.279}


@dataclass(frozen=True, eq=False)
class Direction:
    """A linear edit direction.

    Attributes:
        name: edit name ("age", "smile", ...).
        vector: W: ``[w_dim]`` or ``[num_ws, w_dim]``; S: ``[sum of conv channels]``.
        layers: ws indices the W edit applies to (None: all).
        recommended: strength range ``(lo, hi)`` in CLI units.
        space: "w" or "s".
        source: where the data comes from (credit).
        licence: licence id / title.
        test_data: True for the tiny profile's synthetic directions.
        step_scale: the step per unit strength (0.5 for STIT W files, 1 for S).
        description: one line for `facestitch edits`.
        path: the ``.npy`` file it was read from.
    """

    name: str
    vector: np.ndarray
    layers: tuple[int, ...] | None
    recommended: tuple[float, float]
    space: str
    source: str
    licence: str
    test_data: bool
    step_scale: float = 0.5
    description: str = ""
    path: str | None = None

    def delta_w(self, strength: float, num_ws: int | None = None) -> np.ndarray:
        """W offset ``[num_ws, w_dim]`` float32 for ``strength``: add it to a pivot.

        Example: ``ws_edit = ws + torch.from_numpy(d.delta_w(-8.0, 18))``.
        """
        if self.space != "w":
            raise ValueError(f"{self.name} is an {self.space}-space direction")
        v = np.asarray(self.vector, dtype=np.float64)
        if v.ndim == 1:
            if num_ws is None:
                raise ValueError("num_ws is needed for a [w_dim] direction")
            v = np.broadcast_to(v, (num_ws, v.shape[0]))
        elif num_ws is not None and v.shape[0] != num_ws:
            if np.allclose(v, v[:1]):  # identical rows (STIT files): broadcast row 0
                v = np.broadcast_to(v[0], (num_ws, v.shape[1]))
            else:
                raise ValueError(f"direction {self.name} has {v.shape[0]} layers, the "
                                 f"generator {num_ws}")
        out = (float(strength) * self.step_scale) * v
        if self.layers is not None:
            mask = np.zeros((out.shape[0], 1))
            mask[[i for i in self.layers if i < out.shape[0]]] = 1.0
            out = out * mask
        return np.ascontiguousarray(out, dtype=np.float32)

    def delta_s(self, strength: float, style_channels: Sequence[int],
                style_is_torgb: Sequence[bool]) -> list[np.ndarray]:
        """Per-style offsets (float32 ``[C_l]``; zeros for ToRGB) for S-space edits.

        ``style_channels``/``style_is_torgb`` come from ``Generator.style_channels``
        and ``Generator.style_is_torgb``.
        """
        if self.space != "s":
            raise ValueError(f"{self.name} is a {self.space}-space direction")
        v = np.asarray(self.vector, dtype=np.float64).reshape(-1)
        need = sum(c for c, t in zip(style_channels, style_is_torgb) if not t)
        if v.shape[0] != need:
            raise ValueError(f"S direction {self.name} has {v.shape[0]} channels, the "
                             f"generator's conv styles {need}")
        out, k = [], 0
        for c, is_rgb in zip(style_channels, style_is_torgb):
            if is_rgb:
                out.append(np.zeros(c, np.float32))
            else:
                out.append((float(strength) * self.step_scale * v[k:k + c])
                           .astype(np.float32))
                k += c
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able metadata (no vector) for `facestitch edits --json`."""
        return {"name": self.name, "space": self.space,
                "shape": list(np.shape(self.vector)),
                "layers": list(self.layers) if self.layers is not None else None,
                "recommended": list(self.recommended), "step_scale": self.step_scale,
                "source": self.source, "licence": self.licence,
                "test_data": self.test_data, "description": self.description,
                "path": self.path}


def conv_style_channels(img_resolution: int, channel_base: int,
                        channel_max: int) -> list[int]:
    """Style channels of the conv layers (not ToRGB), in synthesis order."""
    log2 = int(round(math.log2(img_resolution)))
    ch = {2 ** i: min(channel_base // 2 ** i, channel_max) for i in range(2, log2 + 1)}
    out = [ch[4]]
    for i in range(3, log2 + 1):
        r = 2 ** i
        out += [ch[r // 2], ch[r]]
    return out


# --- files --------------------------------------------------------------------------


def _sidecar(npy: Path) -> Path:
    return npy.with_suffix(".json")


def save_direction(folder: str | Path, d: Direction, *,
                   range_note: str = "") -> Path:
    """Write ``<folder>/<name>.npy`` + ``.json`` atomically; returns the .npy path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    npy = folder / f"{d.name}.npy"
    import io

    buf = io.BytesIO()
    np.save(buf, np.asarray(d.vector), allow_pickle=False)
    atomic_write_bytes(npy, buf.getvalue())
    _write_meta(npy, d, range_note)
    return npy


def _write_meta(npy: Path, d: Direction, range_note: str = "") -> None:
    meta = {"format": DIRECTION_FORMAT, "name": d.name, "space": d.space,
            "layers": list(d.layers) if d.layers is not None else None,
            "recommended": list(d.recommended), "range_note": range_note,
            "step_scale": d.step_scale, "source": d.source, "licence": d.licence,
            "test_data": d.test_data, "description": d.description}
    atomic_write_bytes(_sidecar(npy), json.dumps(meta, indent=2).encode("utf-8"))


def load_direction(path: str | Path) -> Direction:
    """Read a direction ``.npy`` (no pickles) and its optional JSON sidecar."""
    path = Path(path)
    try:
        vec = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"cannot read direction {path}: {exc}") from exc
    meta: dict[str, Any] = {}
    side = _sidecar(path)
    if side.is_file():
        try:
            meta = json.loads(side.read_text("utf-8"))
        except ValueError as exc:
            raise ModelFormatError(f"direction metadata {side} is not JSON: {exc}") \
                from exc
        fmt = str(meta.get("format", DIRECTION_FORMAT))
        if fmt.split("/")[0] != DIRECTION_FORMAT.split("/")[0] or \
                not fmt.endswith("/1"):
            raise ModelFormatError(f"{side}: unsupported format {fmt}; this version "
                                   f"reads {DIRECTION_FORMAT}")
    space = str(meta.get("space", "w"))
    if space not in ("w", "s"):
        raise ModelFormatError(f"{side}: space must be 'w' or 's'")
    if not np.issubdtype(vec.dtype, np.floating) or vec.ndim not in (1, 2) or \
            (space == "s" and vec.ndim != 1) or not np.all(np.isfinite(vec)):
        raise ModelFormatError(f"{path}: a direction must be a finite float array of "
                               f"shape [w_dim], [num_ws, w_dim] (W) or [channels] (S); "
                               f"got {vec.dtype} {vec.shape}")
    name = str(meta.get("name", path.stem))
    lo, hi, _ = OFFICIAL_RANGES.get(name, _DEFAULT_RANGE)
    rec = meta.get("recommended", [lo, hi])
    layers = meta.get("layers")
    return Direction(
        name=name, vector=vec,
        layers=tuple(int(i) for i in layers) if layers is not None else None,
        recommended=(float(rec[0]), float(rec[1])), space=space,
        source=str(meta.get("source", "unknown")),
        licence=str(meta.get("licence", "unknown")),
        test_data=bool(meta.get("test_data", False)),
        step_scale=float(meta.get("step_scale", 0.5 if space == "w" else 1.0)),
        description=str(meta.get("description", "")), path=str(path))


def load_directions(folder: str | Path) -> dict[str, Direction]:
    """Every direction in a folder, by name (unreadable files are logged, skipped)."""
    out: dict[str, Direction] = {}
    folder = Path(folder)
    if not folder.is_dir():
        return out
    for npy in sorted(folder.glob("*.npy")):
        try:
            d = load_direction(npy)
        except ModelFormatError as exc:
            log.warning("skipping direction %s: %s", npy, exc)
            continue
        out[d.name] = d
    return out


def write_official_sidecar(store: "Store", entry: "ModelFile") -> None:
    """Sidecar for an installed official W direction (from the manifest)."""
    from engine.models.store import LICENCES

    npy = store.path_of(entry)
    name = Path(entry.name).stem
    lo, hi, note = OFFICIAL_RANGES.get(name, _DEFAULT_RANGE)
    lic = LICENCES.get(entry.licence)
    d = Direction(name=name, vector=np.zeros(1), layers=None, recommended=(lo, hi),
                  space="w",
                  source="EvgenyKashin/stylegan2-distillation (Yandex), via "
                         "rotemtzaban/STIT editings/w_directions",
                  licence=lic.title if lic else entry.licence, test_data=False,
                  step_scale=0.5, description=f"STIT W-space direction '{name}'")
    _write_meta(npy, d, note)


def _profile_dims(profile: str) -> tuple[int, int]:
    """(w_dim, S-space length) of a profile's generator."""
    from engine.models.store import TINY_GENERATOR_KWARGS

    if profile == "tiny":
        k = TINY_GENERATOR_KWARGS
        return int(k["w_dim"]), sum(conv_style_channels(k["img_resolution"],
                                                        k["channel_base"],
                                                        k["channel_max"]))
    return 512, sum(conv_style_channels(1024, 32768, 512))


def install_direction(store: "Store", name: str, path: str | Path, *,
                      profile: str = "official", space: str | None = None) -> Direction:
    """Copy a direction ``.npy`` (and its metadata, when a sidecar is next to it)
    into ``<store>/directions/<profile>/NAME``. Without a sidecar the space is
    inferred: a 1-D vector as long as the profile's conv style channels (6048 at
    1024 px) is an S-space (StyleCLIP global) direction, anything else W.
    """
    import dataclasses

    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ModelFormatError(f"invalid direction name {name!r}")
    src = Path(path)
    d = load_direction(src)
    has_meta = _sidecar(src).is_file()
    w_dim, s_len = _profile_dims(profile)
    vec = np.asarray(d.vector)
    if space is None:
        space = d.space if has_meta else (
            "s" if vec.ndim == 1 and vec.shape[0] == s_len else "w")
    if space == "s" and (vec.ndim != 1 or vec.shape[0] != s_len):
        raise ModelFormatError(f"{src}: an S-space direction for the {profile} profile "
                               f"has {s_len} values, got shape {vec.shape}")
    if space == "w" and vec.shape[-1] != w_dim:
        raise ModelFormatError(f"{src}: a W direction for the {profile} profile ends "
                               f"in {w_dim} values, got shape {vec.shape}")
    lo, hi, _ = OFFICIAL_RANGES.get(name, _DEFAULT_RANGE)
    new = dataclasses.replace(
        d, name=name, space=space,
        step_scale=d.step_scale if has_meta else (0.5 if space == "w" else 1.0),
        recommended=d.recommended if has_meta else
        ((lo, hi) if space == "w" else (-10.0, 10.0)),
        source=d.source if has_meta else f"user file {src.name}",
        licence=d.licence if has_meta else "user supplied (terms unknown)",
        description=d.description or f"user {space.upper()}-space direction")
    out = save_direction(store.directions_dir(profile), new)
    return load_direction(out)


# --- tiny profile -------------------------------------------------------------------

_TINY_S_NAMES = ("lipstick",)


def _name_seed(seed: int, name: str) -> int:
    h = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(h[:8], "little")


def ensure_tiny_directions(store: "Store | None" = None) -> Path:
    """Create the tiny profile's synthetic directions once; returns their folder."""
    from engine.models.store import (
        TINY_GENERATOR_KWARGS,
        TINY_NUM_WS,
        TINY_SEED,
        W_DIRECTION_NAMES,
        Store,
    )

    store = store or Store()
    folder = store.directions_dir("tiny")
    w_dim = int(TINY_GENERATOR_KWARGS["w_dim"])
    s_len = sum(conv_style_channels(TINY_GENERATOR_KWARGS["img_resolution"],
                                    TINY_GENERATOR_KWARGS["channel_base"],
                                    TINY_GENERATOR_KWARGS["channel_max"]))
    src = f"synthetic, seeded ({TINY_SEED}) - TEST DATA, not a real edit"
    for name in W_DIRECTION_NAMES:
        if (folder / f"{name}.npy").is_file() and (folder / f"{name}.json").is_file():
            continue
        rng = np.random.default_rng(_name_seed(TINY_SEED, name))
        v = rng.standard_normal(w_dim)
        v *= _NORMS.get(name, 0.25) / np.linalg.norm(v)
        lo, hi, _ = OFFICIAL_RANGES.get(name, _DEFAULT_RANGE)
        vec = np.repeat(v[None], TINY_NUM_WS, axis=0)  # identical rows, like STIT
        save_direction(folder, Direction(
            name=name, vector=vec, layers=None, recommended=(lo, hi), space="w",
            source=src, licence="test data (no licence terms)", test_data=True,
            description=f"tiny test direction named '{name}'"))
    for name in _TINY_S_NAMES:
        if (folder / f"{name}.npy").is_file() and (folder / f"{name}.json").is_file():
            continue
        rng = np.random.default_rng(_name_seed(TINY_SEED, name))
        v = rng.standard_normal(s_len)
        v[np.abs(v) < 1.5] = 0.0  # sparse like a thresholded StyleCLIP direction
        v /= np.abs(v).max()
        save_direction(folder, Direction(
            name=name, vector=v, layers=None, recommended=(-10.0, 10.0), space="s",
            source=src, licence="test data (no licence terms)", test_data=True,
            step_scale=1.0, description="tiny test S-space (StyleCLIP-like) direction"))
    return folder


def available_edits(profile: str = "auto", *, store: "Store | None" = None
                    ) -> dict[str, Direction]:
    """Installed edit directions of a profile, by name.

    ``"auto"`` means official when the whole official set is installed, else tiny
    (same rule as ``load_models``). The tiny directions are created on first use;
    S-space directions appear when their files are installed and are skipped
    otherwise.
    """
    from engine.models.store import Store, resolve_profile

    store = store or Store()
    profile = resolve_profile(profile, store)
    if profile == "tiny":
        ensure_tiny_directions(store)
    elif profile == "official":
        ensure_official_sidecars(store)
    else:
        raise EditUnknown(f"unknown model profile {profile!r}")
    return load_directions(store.directions_dir(profile))


def ensure_official_sidecars(store: "Store") -> None:
    """Write the metadata sidecar of every installed official W direction that
    has none yet (the store installs the ``.npy`` files only)."""
    for entry in store.manifest:
        if entry.role != "w_direction":
            continue
        npy = store.installed(entry.name)
        if npy is not None and not _sidecar(npy).is_file():
            write_official_sidecar(store, entry)
