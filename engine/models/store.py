"""The FaceStitch model store: official files, user models, licences (torch-free).

Layout under ``$FACESTITCH_HOME`` (default: the platform's per-user data folder)::

    store.json                     records: installed files + hashes, accepted
                                   licences, user models (facestitch.ModelStore/1)
    models/<file>                  official files (ffhq.pkl, e4e_ffhq_encode.pt, ...)
    models/user/<NAME><ext>        user checkpoints registered with `models add`
    directions/<profile>/<n>.npy   edit directions + <n>.json sidecars
    tiny/                          the tiny profile's networks (our own format)
    downloads/<file>.part          partial downloads (resumed with HTTP Range)

Policy (docs/models.md "Sizes and hashes", "Licences"): a file whose manifest hash is
verified must match
it; an unverified or unknown hash never refuses a file but is recorded on first
install and checked by ``verify`` afterwards. Files under non-commercial terms need
an explicit acceptance, recorded in ``store.json``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import http.client
import json
import logging
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from fsexchange.errors import (
    ModelError,
    ModelHashMismatch,
    ModelMissing,
)
from fsexchange.fsutil import atomic_write_bytes, fsync_dir, sha256_file, unique_name

__all__ = [
    "Licence",
    "ModelFile",
    "LICENCES",
    "MANIFEST",
    "W_DIRECTION_NAMES",
    "TINY_GENERATOR_KWARGS",
    "TINY_ENCODER_KWARGS",
    "TINY_SEED",
    "Store",
    "store_home",
    "PARSER_FILE",
    "CLIP_FILE",
    "CLIP_VOCAB_FILE",
    "FS3_FILE",
    "models_root",
    "store_files",
    "manifest_entry",
    "official_files",
    "base_url_override",
]

log = logging.getLogger(__name__)

STORE_FORMAT = "facestitch.ModelStore/1"
#: The BiSeNet face-parser weights (face-parsing.PyTorch), by their official name.
PARSER_FILE = "79999_iter.pth"
BASE_URL_ENV = "FACESTITCH_MODEL_BASE_URL"


# --- licences and manifest --------------------------------------------------------


@dataclass(frozen=True)
class Licence:
    id: str
    title: str
    terms: str  # what the user accepts, in one paragraph
    url: str
    non_commercial: bool
    requires_acceptance: bool


LICENCES: dict[str, Licence] = {lic.id: lic for lic in [
    Licence("nvidia-nc", "NVIDIA Source Code License-NC",
            "The StyleGAN2 FFHQ weights (and the e4e and rosinality weights derived "
            "from them) may be used non-commercially only, i.e. for research or "
            "evaluation purposes; redistribution only under the same licence with its "
            "notices (docs/models.md, 'Licences'). Their training data, FFHQ, is "
            "CC BY-NC-SA 4.0.",
            "https://github.com/NVlabs/stylegan2-ada-pytorch/blob/main/LICENSE.txt",
            True, True),
    Licence("celebamask-nc", "face-parsing.PyTorch (MIT code; CelebAMask-HQ data)",
            "The BiSeNet face-parsing weights were trained on CelebAMask-HQ, a data "
            "set licensed for non-commercial research use only.",
            "https://github.com/zllrunning/face-parsing.PyTorch", True, True),
    Licence("cc-by-nc-4.0", "CC BY-NC 4.0 (stylegan2-distillation directions)",
            "The W-space directions of EvgenyKashin/stylegan2-distillation (Yandex), "
            "as shipped with STIT: attribution required, non-commercial use only.",
            "https://creativecommons.org/licenses/by-nc/4.0/", True, True),
    Licence("bsd-3-torchvision", "torchvision model weights (BSD-3-Clause code)",
            "torchvision's ImageNet-trained AlexNet, used as the LPIPS backbone.",
            "https://github.com/pytorch/vision/blob/main/LICENSE", False, False),
    Licence("ibug-nc", "dlib 68-point model (iBUG 300-W data)",
            "Released by its author to the public domain, but trained on iBUG 300-W, "
            "whose licence excludes commercial use.",
            "https://github.com/davisking/dlib-models", True, True),
    Licence("mit-clip", "OpenAI CLIP (MIT)",
            "CLIP's code, tokenizer vocabulary and released weights, under the MIT "
            "licence of the openai/CLIP repository.",
            "https://github.com/openai/CLIP/blob/main/LICENSE", False, False),
    Licence("mit-styleclip", "StyleCLIP (MIT)",
            "StyleCLIP global-direction data (fs3) from the STIT repository; the "
            "generator it was computed for is NVIDIA non-commercial.",
            "https://github.com/orpatashnik/StyleCLIP", True, True),
]}


@dataclass(frozen=True)
class ModelFile:
    """One official file.

    Attributes:
        name: file name (also the manifest key and the `fetch NAME`).
        role: generator | generator_alt | encoder | parser | lpips_backbone |
            w_direction | s_direction_data | landmarks | clip | clip_vocab.
        dest: path relative to the store home where it is installed.
        size: bytes when known.
        sha256: expected hash when known; ``sha256_verified`` says whether it was
            measured on the official file (a mismatch then refuses the file).
        sha256_prefix: torch.hub-style hash prefix in the name (checked when known).
        url: direct public URL for `fetch` (None: manual download from ``page``).
        page: where a user finds the file by hand.
        licence: id in :data:`LICENCES`.
        required: part of the `official` profile (else optional).
    """

    name: str
    role: str
    dest: str
    size: int | None = None
    sha256: str | None = None
    sha256_verified: bool = False
    sha256_prefix: str | None = None
    url: str | None = None
    page: str = ""
    licence: str = "nvidia-nc"
    required: bool = True
    notes: str = ""


#: The 16 W-space directions shipped with STIT (docs/reference.md "Editing").
W_DIRECTION_NAMES = (
    "age", "eye_distance", "eye_eyebrow_distance", "eye_ratio", "eyes_open", "gender",
    "lip_ratio", "mouth_open", "mouth_ratio", "nose_mouth_distance", "nose_ratio",
    "nose_tip", "pitch", "roll", "smile", "yaw",
)
_STIT_COMMIT = "5d6c472bca3c5cc1751dc6932ebdd01ff37f36c2"
_STIT_RAW = f"https://raw.githubusercontent.com/rotemtzaban/STIT/{_STIT_COMMIT}"
_STIT_PAGE = "https://github.com/rotemtzaban/STIT#pretrained-models"
_CLIP_COMMIT = "d05afc436d78f1c48dc0dbf8e5980a9d471f35f6"
_CLIP_SHA = "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"
#: The files of StyleCLIP text edits (docs/models.md "CLIP text tower").
CLIP_FILE = "ViT-B-32.pt"
CLIP_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
FS3_FILE = "fs3.npy"

MANIFEST: tuple[ModelFile, ...] = (
    ModelFile(
        "ffhq.pkl", "generator", "models/ffhq.pkl",
        url="https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/"
            "ffhq.pkl",
        page="https://github.com/NVlabs/stylegan2-ada-pytorch#pretrained-networks",
        notes="NVIDIA FFHQ-1024 StyleGAN2 (G_ema read by the allow-listed unpickler). "
              "The 237,040,112-byte file with sha256 ffe2233f... seen elsewhere is "
              "probably not this file (docs/models.md, 'Sizes and hashes'); hash "
              "recorded on install."),
    ModelFile(
        "stylegan2-ffhq-config-f.pt", "generator_alt",
        "models/stylegan2-ffhq-config-f.pt",
        size=381_462_551,
        sha256="bae494ef77e32a9cd1792a81a3c167692a0e64f6bcd8b06592ff42917e2ed46e",
        page="https://github.com/rosinality/stylegan2-pytorch", required=False,
        notes="rosinality layout of the same generator; used when ffhq.pkl is absent. "
              "Hash unverified (third-party LFS pointer)."),
    ModelFile(
        "e4e_ffhq_encode.pt", "encoder", "models/e4e_ffhq_encode.pt",
        size=1_201_649_680,
        sha256="2ace1d9a8c05c10a399bcd500b8dda118f759ff1aac89dbdab7435f2136a0999",
        page="https://github.com/omertov/encoder4editing#pretrained-models",
        notes="e4e FFHQ encoder (MIT code; weights trained against NVIDIA's FFHQ "
              "generator). Hash unverified (third-party LFS pointer)."),
    ModelFile(
        "79999_iter.pth", "parser", "models/79999_iter.pth",
        page="https://github.com/zllrunning/face-parsing.PyTorch (Google Drive id "
             "154JgKpzCPW82qINcVieuPH3fZ2e0P812)",
        licence="celebamask-nc",
        notes="BiSeNet face parsing, 19 classes. Hash unknown: recorded on install."),
    ModelFile(
        "alexnet-owt-7be5be79.pth", "lpips_backbone", "models/alexnet-owt-7be5be79.pth",
        sha256_prefix="7be5be79",
        url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        page="https://pytorch.org/vision/stable/models.html",
        licence="bsd-3-torchvision",
        notes="LPIPS AlexNet backbone; also found in $TORCH_HOME/hub/checkpoints."),
    ModelFile(
        "shape_predictor_68_face_landmarks.dat", "landmarks",
        "models/shape_predictor_68_face_landmarks.dat", size=99_693_937,
        sha256="fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f",
        sha256_verified=True, page="http://dlib.net/files/", licence="ibug-nc",
        required=False,
        notes="dlib 68-point landmarks; also shipped by face-recognition-models."),
    ModelFile(
        "fs3.npy", "s_direction_data", "models/fs3.npy",
        url=f"{_STIT_RAW}/editings/styleclip_global/fs3.npy",
        page="https://github.com/rotemtzaban/STIT/tree/main/editings/"
             "styleclip_global", licence="mit-styleclip", required=False,
        notes="StyleCLIP global-direction relevance matrix (6048 x 512) for the FFHQ "
              "generator: text edits (--edit-text) turn a prompt into an S-space "
              "direction with it. Hash unknown: recorded on install."),
    ModelFile(
        CLIP_FILE, "clip", f"models/{CLIP_FILE}", sha256=_CLIP_SHA,
        sha256_verified=True,
        url=f"https://openaipublic.azureedge.net/clip/models/{_CLIP_SHA}/{CLIP_FILE}",
        page="https://github.com/openai/CLIP", licence="mit-clip", required=False,
        notes="OpenAI CLIP ViT-B/32, a TorchScript archive; only its text tower is "
              "read, as data, for text edits. The hash is the one in OpenAI's URL, "
              "which their clip package checks downloads against."),
    ModelFile(
        CLIP_VOCAB_FILE, "clip_vocab", f"models/{CLIP_VOCAB_FILE}", size=1_356_917,
        sha256="924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a",
        sha256_verified=True,
        url=f"https://raw.githubusercontent.com/openai/CLIP/{_CLIP_COMMIT}/clip/"
            f"{CLIP_VOCAB_FILE}",
        page="https://github.com/openai/CLIP/tree/main/clip", licence="mit-clip",
        required=False,
        notes="CLIP's byte-level BPE merges: the text tokenizer's vocabulary."),
) + tuple(
    ModelFile(
        f"{n}.npy", "w_direction", f"directions/official/{n}.npy", size=73_856,
        url=f"{_STIT_RAW}/editings/w_directions/{n}.npy",
        page="https://github.com/rotemtzaban/STIT/tree/main/editings/w_directions",
        licence="cc-by-nc-4.0", required=False,
        notes="Edit data, fetched with the official set. Credit: "
              "EvgenyKashin/stylegan2-distillation (Yandex), via STIT.")
    for n in W_DIRECTION_NAMES)

#: The tiny profile: small networks initialised from a seed (test / demo only).
TINY_SEED = 20240229
TINY_GENERATOR_KWARGS: dict[str, Any] = dict(
    z_dim=64, w_dim=64, img_resolution=64, img_channels=3, channel_base=2048,
    channel_max=64, mapping_layers=4, mapping_lr_mul=0.01, conv_clamp=None,
    resample_filter=[1.0, 3.0, 3.0, 1.0], use_noise=True, w_avg_beta=0.995)
TINY_NUM_WS = 10  # 2 * log2(64) - 2
TINY_ENCODER_KWARGS: dict[str, Any] = dict(
    num_ws=TINY_NUM_WS, w_dim=64, input_resolution=64, stage_units=[1, 1, 1, 1],
    stage_widths=[16, 24, 32, 64], input_width=16, coarse_index=3, middle_index=7,
    se_reduction=4)


def manifest_entry(name: str, manifest: Sequence[ModelFile] = MANIFEST) -> ModelFile:
    for m in manifest:
        if m.name == name:
            return m
    raise ModelError(f"{name!r} is not in the model manifest; known: "
                     f"{', '.join(m.name for m in manifest)}")


def official_files(manifest: Sequence[ModelFile] = MANIFEST) -> list[ModelFile]:
    return list(manifest)


def base_url_override() -> str | None:
    """``$FACESTITCH_MODEL_BASE_URL``: fetch every file from BASE/<name> instead."""
    v = os.environ.get(BASE_URL_ENV, "").strip()
    return v.rstrip("/") if v else None


# --- the store --------------------------------------------------------------------


def store_home() -> Path:
    """``$FACESTITCH_HOME`` or the platform's per-user data folder."""
    env = os.environ.get("FACESTITCH_HOME", "").strip()
    if env:
        return Path(env).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "FaceStitch"
    if os.name == "nt":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "FaceStitch"
    xdg = os.environ.get("XDG_DATA_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "facestitch"


def models_root() -> Path:
    """The store's ``models/`` folder, where official and extra networks live."""
    return store_home() / "models"


def store_files(subdir: str, patterns: Sequence[str]) -> list[Path]:
    """Installed files matching ``patterns`` in ``models/<subdir>/``, sorted."""
    folder = models_root() / subdir
    if not folder.is_dir():
        return []
    found = {p for pat in patterns for p in folder.glob(pat) if p.is_file()}
    return sorted(found)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class InstallReport:
    name: str
    path: Path
    sha256: str
    size: int
    status: str  # "installed" | "already" | "verified"
    hash_check: str  # "verified" | "matches-unverified" | "recorded" | "prefix"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


class Store:
    """Model store rooted at ``home`` (default :func:`store_home`).

    Args:
        home: store root.
        manifest: the official file table (tests pass their own).
    """

    def __init__(self, home: str | Path | None = None,
                 manifest: Sequence[ModelFile] = MANIFEST) -> None:
        self.home = Path(home) if home is not None else store_home()
        self.manifest = tuple(manifest)

    # paths
    @property
    def records_path(self) -> Path:
        return self.home / "store.json"

    def path_of(self, entry: ModelFile | str) -> Path:
        e = manifest_entry(entry, self.manifest) if isinstance(entry, str) else entry
        return self.home / e.dest

    def directions_dir(self, profile: str) -> Path:
        return self.home / "directions" / profile

    @property
    def tiny_dir(self) -> Path:
        return self.home / "tiny"

    @property
    def downloads_dir(self) -> Path:
        return self.home / "downloads"

    # records
    def records(self) -> dict[str, Any]:
        try:
            data = json.loads(self.records_path.read_text("utf-8"))
        except FileNotFoundError:
            data = {}
        except (OSError, ValueError) as exc:
            raise ModelError(f"model store records {self.records_path} are unreadable "
                             f"({exc}); fix or delete the file") from exc
        fmt = data.get("format", STORE_FORMAT)
        if not str(fmt).startswith("facestitch.ModelStore/"):
            raise ModelError(f"{self.records_path} is not a FaceStitch store file")
        if fmt != STORE_FORMAT:
            raise ModelError(f"{self.records_path} has version {fmt}; this FaceStitch "
                             f"reads {STORE_FORMAT}")
        data.setdefault("format", STORE_FORMAT)
        for key in ("files", "licences", "user_models"):
            data.setdefault(key, {})
        return data

    def _write_records(self, data: Mapping[str, Any]) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.records_path,
                           json.dumps(data, indent=2, sort_keys=True).encode("utf-8"))

    def _update(self, fn: Callable[[dict[str, Any]], None]) -> None:
        data = self.records()
        fn(data)
        self._write_records(data)

    # licences
    def licence_accepted(self, licence_id: str) -> bool:
        lic = LICENCES.get(licence_id)
        if lic is not None and not lic.requires_acceptance:
            return True
        return licence_id in self.records()["licences"]

    def accept_licence(self, licence_id: str, files: Iterable[str] = ()) -> None:
        lic = LICENCES[licence_id]

        def upd(d: dict[str, Any]) -> None:
            rec = d["licences"].setdefault(licence_id, {"accepted_at": _now(),
                                                        "title": lic.title,
                                                        "url": lic.url, "files": []})
            rec["files"] = sorted(set(rec.get("files", [])) | set(files))
        self._update(upd)

    def _require_licence(self, entries: Sequence[ModelFile], accept: bool) -> None:
        needed: dict[str, list[str]] = {}
        for e in entries:
            lic = LICENCES.get(e.licence)
            if lic and lic.requires_acceptance and not self.licence_accepted(lic.id):
                needed.setdefault(lic.id, []).append(e.name)
        if not needed:
            return
        if accept:
            for lid, names in needed.items():
                self.accept_licence(lid, names)
            return
        lines = []
        for lid, names in needed.items():
            lic = LICENCES[lid]
            lines.append(f"{lic.title} ({lic.url}) for {', '.join(names)}: {lic.terms}")
        raise ModelError("these files come under terms you must accept first; "
                         "re-run with --accept-licence to accept them: "
                         + " | ".join(lines))

    # hashes
    def cached_sha256(self, path: str | Path) -> str:
        """sha256 of ``path``, cached in the records by (size, mtime)."""
        path = Path(path)
        st = path.stat()
        key = str(path.resolve())
        c = self.records().get("hash_cache", {}).get(key)
        if c and c.get("size") == st.st_size and c.get("mtime_ns") == st.st_mtime_ns:
            return str(c["sha256"])
        digest = sha256_file(path)

        def upd(d: dict[str, Any]) -> None:
            d.setdefault("hash_cache", {})[key] = {"size": st.st_size,
                                                   "mtime_ns": st.st_mtime_ns,
                                                   "sha256": digest}
        self._update(upd)
        return digest

    def check_file(self, entry: ModelFile | str, path: str | Path) -> str:
        """Check a file found outside the store (e.g. in torch's hub folder) against
        the manifest (verified hash or name prefix); returns its sha256."""
        e = manifest_entry(entry, self.manifest) if isinstance(entry, str) else entry
        digest = self.cached_sha256(path)
        self._check_hash(e, digest, Path(path).stat().st_size)
        return digest

    # installed files
    def installed(self, name: str) -> Path | None:
        """Path of an installed manifest file (None when absent)."""
        p = self.path_of(name)
        return p if p.is_file() else None

    def file_record(self, name: str) -> dict[str, Any] | None:
        return self.records()["files"].get(name)

    def _check_hash(self, entry: ModelFile, digest: str, size: int) -> str:
        """Raise on a verified-hash mismatch; return the kind of check done."""
        if entry.sha256 and entry.sha256_verified:
            if digest != entry.sha256:
                raise ModelHashMismatch(
                    f"{entry.name}: sha256 {digest} differs from the official "
                    f"{entry.sha256}; the file is not the official one or is damaged")
            return "verified"
        if entry.sha256_prefix and not digest.startswith(entry.sha256_prefix):
            raise ModelHashMismatch(
                f"{entry.name}: sha256 {digest[:16]}... does not start with "
                f"{entry.sha256_prefix} as its name says; the file is damaged")
        if entry.sha256:
            if digest == entry.sha256:
                return "matches-unverified"
            log.warning("%s: sha256 %s differs from the unverified manifest value %s "
                        "(size %d); accepted and recorded", entry.name, digest,
                        entry.sha256, size)
            return "recorded"
        return "prefix" if entry.sha256_prefix else "recorded"

    def _record_install(self, entry: ModelFile, digest: str, size: int,
                        source: str, check: str) -> None:
        def upd(d: dict[str, Any]) -> None:
            d["files"][entry.name] = {"sha256": digest, "size": size, "source": source,
                                      "installed_at": _now(), "hash_check": check,
                                      "dest": entry.dest}
        # The sidecar of an official W direction is written by
        # engine.models.directions when edits are listed (the store stays below
        # the directions in the import graph).
        self._update(upd)

    def install_file(self, entry: ModelFile, src: Path, *, accept_licence: bool = False,
                     source: str | None = None) -> InstallReport:
        """Copy ``src`` into the store as ``entry`` with hash verification."""
        self._require_licence([entry], accept_licence)
        dest = self.path_of(entry)
        size = src.stat().st_size
        if entry.size is not None and entry.sha256_verified and size != entry.size:
            raise ModelHashMismatch(f"{src}: {size} bytes, the official {entry.name} "
                                    f"has {entry.size}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{unique_name()}.tmp")
        h = hashlib.sha256()
        try:
            with open(src, "rb") as fi, open(tmp, "wb") as fo:
                while block := fi.read(1 << 20):
                    h.update(block)
                    fo.write(block)
                fo.flush()
                os.fsync(fo.fileno())
            digest = h.hexdigest()
            check = self._check_hash(entry, digest, size)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(dest.parent)
        self._record_install(entry, digest, size, source or str(src), check)
        return InstallReport(entry.name, dest, digest, size, "installed", check)

    def install_from(self, folder: str | Path, *, accept_licence: bool = False,
                     names: Sequence[str] | None = None) -> list[InstallReport]:
        """Install every manifest file found in ``folder`` (searched recursively,
        so a STIT ``pretrained_models/`` tree or ``w_directions/`` works)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelMissing(f"{folder} is not a folder")
        found: dict[str, Path] = {}
        wanted = {m.name for m in self.manifest} if names is None else set(names)
        for p in sorted(folder.rglob("*")):
            if p.is_file() and p.name in wanted and p.name not in found:
                found[p.name] = p
        entries = [manifest_entry(n, self.manifest) for n in sorted(found)]
        self._require_licence(entries, accept_licence)
        reports = []
        for e in entries:
            reports.append(self.install_file(e, found[e.name], accept_licence=True))
        return reports

    # fetch
    def fetch(self, names: Sequence[str] | None = None, *,
              accept_licence: bool = False, base_url: str | None = None,
              attempts: int = 3, timeout: float = 60.0,
              progress: Callable[[str, int, int | None], None] | None = None
              ) -> list[InstallReport]:
        """Download manifest files (default: every required file with a URL).

        Downloads go to ``downloads/<name>.part`` and resume with an HTTP Range
        request after an interruption (up to ``attempts`` tries per call; a later
        call resumes too); the hash is checked before one atomic rename into the
        store. ``base_url`` (or ``$FACESTITCH_MODEL_BASE_URL``) replaces every URL
        by ``BASE/<name>``.
        """
        base = (base_url.rstrip("/") if base_url else None) or base_url_override()
        if names:
            entries = [manifest_entry(n, self.manifest) for n in names]
        else:
            entries = [m for m in self.manifest
                       if (m.url or base) and (m.required or m.role == "w_direction")]
        todo = []
        for e in entries:
            url = f"{base}/{e.name}" if base else e.url
            if not url:
                raise ModelError(f"{e.name} has no direct download; get it from "
                                 f"{e.page} and run 'facestitch models install --from "
                                 f"FOLDER'")
            todo.append((e, url))
        self._require_licence([e for e, _ in todo], accept_licence)
        reports = []
        for e, url in todo:
            if self.installed(e.name) and self.file_record(e.name):
                rec = self.file_record(e.name) or {}
                reports.append(InstallReport(
                    e.name, self.path_of(e), rec.get("sha256", ""), rec.get("size", 0),
                    "already", rec.get("hash_check", "recorded")))
                continue
            reports.append(self._download(e, url, attempts, timeout, progress))
        return reports

    def _download(self, entry: ModelFile, url: str, attempts: int, timeout: float,
                  progress: Callable[[str, int, int | None], None] | None
                  ) -> InstallReport:
        self.downloads_dir.mkdir(parents=True, exist_ok=True)
        part = self.downloads_dir / f"{entry.name}.part"
        last_exc: Exception | None = None
        for attempt in range(max(attempts, 1)):
            try:
                self._download_once(entry, url, part, timeout, progress)
                last_exc = None
                break
            except (urllib.error.URLError, OSError, http.client.HTTPException,
                    ValueError) as exc:
                last_exc = exc
                log.warning("download of %s interrupted (%s); %s", entry.name, exc,
                            "retrying" if attempt + 1 < attempts else "giving up")
                time.sleep(min(0.2 * (attempt + 1), 1.0))
        if last_exc is not None:
            raise ModelError(f"download of {entry.name} from {url} failed: {last_exc}; "
                             f"run the same command again to resume "
                             f"({part.stat().st_size if part.exists() else 0} bytes "
                             f"kept)") from last_exc
        size = part.stat().st_size
        digest = sha256_file(part)
        try:
            check = self._check_hash(entry, digest, size)
        except ModelHashMismatch:
            part.unlink(missing_ok=True)
            raise
        if entry.size is not None and entry.sha256_verified and size != entry.size:
            part.unlink(missing_ok=True)
            raise ModelHashMismatch(f"{entry.name}: downloaded {size} bytes, expected "
                                    f"{entry.size}")
        dest = self.path_of(entry)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, dest)
        fsync_dir(dest.parent)
        self._record_install(entry, digest, size, url, check)
        return InstallReport(entry.name, dest, digest, size, "installed", check)

    @staticmethod
    def _download_once(entry: ModelFile, url: str, part: Path, timeout: float,
                       progress: Callable[[str, int, int | None], None] | None) -> None:
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={"User-Agent": "facestitch"})
        if have:
            req.add_header("Range", f"bytes={have}-")
        try:
            resp = urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # nothing left to fetch
                return
            raise
        with resp:
            status = getattr(resp, "status", 200)
            if have and status != 206:  # server ignored Range: start over
                have = 0
            length = resp.headers.get("Content-Length")
            total = (int(length) + have) if length is not None else None
            mode = "ab" if have else "wb"
            got = have
            with open(part, mode) as fh:
                while True:
                    block = resp.read(1 << 16)
                    if not block:
                        break
                    fh.write(block)
                    got += len(block)
                    if progress:
                        progress(entry.name, got, total)
                fh.flush()
                os.fsync(fh.fileno())
            if total is not None and got < total:
                raise ConnectionError(f"connection closed after {got} of {total} bytes")

    # verification
    def verify(self) -> list[dict[str, Any]]:
        """Re-hash every installed file; compare with the manifest and the records."""
        recs = self.records()
        out = []
        for e in self.manifest:
            p = self.path_of(e)
            if not p.is_file():
                continue
            digest = sha256_file(p)
            rec = recs["files"].get(e.name)
            status = "ok"
            detail = ""
            try:
                check = self._check_hash(e, digest, p.stat().st_size)
            except ModelHashMismatch as exc:
                status, detail, check = "mismatch", str(exc), "failed"
            if status == "ok" and rec and rec.get("sha256") != digest:
                status = "changed"
                detail = (f"sha256 {digest} differs from the one recorded at install "
                          f"({rec.get('sha256')})")
            if status == "ok" and not rec:
                status = "unrecorded"
                detail = "present but not installed by the store; hash recorded now"
                self._record_install(e, digest, p.stat().st_size, str(p), check)
            out.append({"name": e.name, "path": str(p), "sha256": digest,
                        "status": status, "hash_check": check, "detail": detail})
        for name, um in recs["user_models"].items():
            p = Path(um["path"])
            if not p.is_file():
                out.append({"name": name, "path": str(p), "status": "missing",
                            "sha256": None, "hash_check": "user", "detail": ""})
                continue
            digest = sha256_file(p)
            status = "ok" if digest == um.get("sha256") else "changed"
            out.append({"name": name, "path": str(p), "sha256": digest,
                        "status": status, "hash_check": "user", "detail": ""})
        return out

    # user models
    def user_models(self) -> dict[str, dict[str, Any]]:
        return dict(self.records()["user_models"])

    def add_user_model(self, name: str, path: str | Path, info: Mapping[str, Any], *,
                       copy: bool = True) -> dict[str, Any]:
        """Register an inspected checkpoint
        (:func:`engine.models.checkpoints.inspect_checkpoint`)."""
        if not name or any(c in name for c in "/\\:") or name.startswith("."):
            raise ModelError(f"invalid model name {name!r}")
        src = Path(path).resolve()
        if copy:
            dest = self.home / "models" / "user" / f"{name}{src.suffix}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            pairs = [(src, dest)]
            if info.get("format") == "facestitch":  # our format: its JSON sidecar too
                pairs.append((src.with_suffix(".json"), dest.with_suffix(".json")))
            for s, d in pairs:
                tmp = d.with_name(f".{d.name}.{unique_name()}.tmp")
                try:
                    shutil.copyfile(s, tmp)
                    os.replace(tmp, d)
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
        else:
            dest = src
        rec = {"path": str(dest), "source": str(src), "sha256": sha256_file(dest),
               "size": dest.stat().st_size, "added_at": _now(), **dict(info)}

        def upd(d: dict[str, Any]) -> None:
            d["user_models"][name] = rec
        self._update(upd)
        return rec

    # profiles
    def official_status(self) -> dict[str, Path | None]:
        """Role -> installed path for the official profile's parts."""
        out: dict[str, Path | None] = {}
        gen = self.installed("ffhq.pkl") or self.installed("stylegan2-ffhq-config-f.pt")
        out["generator"] = gen
        out["encoder"] = self.installed("e4e_ffhq_encode.pt")
        out["parser"] = self.installed(PARSER_FILE)
        out["lpips_backbone"] = self.lpips_backbone_path()
        return out

    def official_missing(self) -> list[str]:
        names = {"generator": "ffhq.pkl (or stylegan2-ffhq-config-f.pt)",
                 "encoder": "e4e_ffhq_encode.pt", "parser": PARSER_FILE,
                 "lpips_backbone": "alexnet-owt-7be5be79.pth"}
        return [names[k] for k, v in self.official_status().items() if v is None]

    def official_complete(self) -> bool:
        return not self.official_missing()

    def lpips_backbone_path(self, name: str = "alexnet-owt-7be5be79.pth"
                            ) -> Path | None:
        """The store copy, else ``$TORCH_HOME/hub/checkpoints`` (torch's hub folder)."""
        p = self.home / "models" / name
        if p.is_file():
            return p
        hub = _torch_hub_checkpoints()
        q = hub / name
        return q if q.is_file() else None


def resolve_profile(profile: str = "auto", store: Store | None = None) -> str:
    """``"auto"`` -> ``"official"`` when the whole official set is installed, else
    ``"tiny"``; other names pass through after validation."""
    if profile == "auto":
        return "official" if (store or Store()).official_complete() else "tiny"
    if profile not in ("official", "tiny"):
        raise ModelError(f"unknown model profile {profile!r}; use auto, official or "
                         f"tiny")
    return profile


def _torch_hub_checkpoints() -> Path:
    """torch.hub.get_dir()/checkpoints without importing torch."""
    th = os.environ.get("TORCH_HOME", "").strip()
    if th:
        return Path(th).expanduser() / "hub" / "checkpoints"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "torch" / "hub" / "checkpoints"


def licence_summary(entry: ModelFile) -> dict[str, Any]:
    lic = LICENCES.get(entry.licence)
    return {"id": entry.licence, "title": lic.title if lic else entry.licence,
            "url": lic.url if lic else "", "non_commercial": bool(lic and
                                                                  lic.non_commercial)}


def describe_manifest(store: Store) -> list[dict[str, Any]]:
    """Rows for `models list`: manifest + install state + licence state."""
    recs = store.records()
    rows = []
    for e in store.manifest:
        p = store.path_of(e)
        rec = recs["files"].get(e.name)
        state = "installed" if p.is_file() else "missing"
        if e.role == "lpips_backbone" and state == "missing" and \
                store.lpips_backbone_path(e.name):
            state = "found (torch hub)"
            p = store.lpips_backbone_path(e.name) or p
        rows.append({
            "name": e.name, "role": e.role, "required": e.required, "state": state,
            "path": str(p), "size": e.size,
            "sha256": (rec or {}).get("sha256") or e.sha256,
            "sha256_verified": e.sha256_verified, "url": e.url, "page": e.page,
            "licence": licence_summary(e),
            "licence_accepted": store.licence_accepted(e.licence),
        })
    return rows


__all__ += ["InstallReport", "describe_manifest", "licence_summary", "resolve_profile"]
