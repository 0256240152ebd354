"""OpenAI CLIP files as data: the model archive's state dict, and the BPE tokenizer.

**Weights.** OpenAI ships ``ViT-B-32.pt`` as a TorchScript archive: a zip whose
``<name>/data.pkl`` pickles the module tree (objects of ``__torch__.*`` classes
whose state is a dict of attributes, tensors among them), ``<name>/data/<key>`` the
raw storages and ``<name>/code/`` the TorchScript source. ``torch.jit.load`` would
compile and run that source; :func:`read_clip_state_dict` instead unpickles
``data.pkl`` with an allow-list (tensor rebuilds, ``OrderedDict``, storage types,
TorchScript's list builders) in which every ``__torch__`` class is a plain record
of its attributes, reads the storages as bytes, and flattens the records into the
usual ``module.sub.param`` state dict. Anything else in the pickle raises
:class:`ModelUnsafe` naming it. A plain ``torch.save`` state dict (e.g. a user's
``model.state_dict()``) is read with ``weights_only`` instead. See docs/models.md,
"CLIP text tower".

**Tokenizer.** :class:`BPETokenizer` is CLIP's byte-level BPE, read from
``bpe_simple_vocab_16e6.txt.gz`` (one merge per line after a header line; the first
49,152 − 256 − 2 merges are used): the vocabulary is the 256 byte symbols, the same
with the end-of-word mark ``</w>``, one symbol per merge, then ``<|startoftext|>``
and ``<|endoftext|>`` (49,408 at full size). Text is HTML-unescaped, its
whitespace collapsed and lower-cased; words are split as CLIP splits them, with
Python's ``re`` standing in for Unicode letter/number classes (the same on
ASCII prompts); ``ftfy``'s repair of mis-decoded text is not applied.
"""

from __future__ import annotations

import collections
import gzip
import html
import io
import pickle
import re
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import torch

from fsexchange.errors import (EditInvalid, ModelError, ModelFormatError, ModelMissing,
                               ModelUnsafe)

from engine.models.formats.safe_load import safe_torch_load

__all__ = ["read_clip_state_dict", "BPETokenizer", "bytes_to_unicode",
           "MERGES_USED"]

# --- the model archive ----------------------------------------------------------------

_STORAGE_DTYPES = {
    "HalfStorage": torch.float16, "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64, "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8,
    "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _ScriptObject:
    """A TorchScript object as data: its class name and its attributes."""

    qualname = ""

    def __setstate__(self, state: Any) -> None:  # pickle BUILD
        self.attrs = state if isinstance(state, dict) else {}


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: Sequence[int],
                    stride: Sequence[int], *_: Any) -> torch.Tensor:
    return storage.as_strided(tuple(size), tuple(stride), int(offset)).clone()


def _passthrough(value: Any, *_: Any) -> Any:
    return value


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _passthrough,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.jit._pickle", "build_intlist"): list,
    ("torch.jit._pickle", "build_doublelist"): list,
    ("torch.jit._pickle", "build_boollist"): list,
    ("torch.jit._pickle", "build_tensorlist"): list,
    ("torch.jit._pickle", "restore_type_tag"): _passthrough,
}


class _ArchiveUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str,
                 what: str) -> None:
        super().__init__(io.BytesIO(data))
        self.zf, self.prefix, self.what = zf, prefix, what
        self.storages: dict[str, torch.Tensor] = {}
        self.classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "__torch__" or module.startswith("__torch__."):
            key = f"{module}.{name}"
            if key not in self.classes:  # a record type, no code of the archive
                self.classes[key] = type(name, (_ScriptObject,), {"qualname": key})
            return self.classes[key]
        raise ModelUnsafe(f"{self.what}: the archive's pickle names {module}.{name}, "
                          "which is not on the allow list of plain data; refusing "
                          "to load it")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if (not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage"
                or not isinstance(pid[1], _StorageType)):
            raise ModelFormatError(f"{self.what}: unexpected storage record {pid!r}")
        _, kind, key, _location, numel = pid[:5]
        if key not in self.storages:
            try:
                raw = self.zf.read(f"{self.prefix}data/{key}")
            except KeyError:
                raise ModelFormatError(f"{self.what}: storage {key} is missing from "
                                       "the archive") from None
            t = torch.frombuffer(bytearray(raw), dtype=kind.dtype) if raw else \
                torch.empty(0, dtype=kind.dtype)
            if t.numel() < int(numel):
                raise ModelFormatError(f"{self.what}: storage {key} is truncated")
            self.storages[key] = t
        return self.storages[key]


def _flatten(obj: _ScriptObject, prefix: str, out: dict[str, torch.Tensor]) -> None:
    for name, value in getattr(obj, "attrs", {}).items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, _ScriptObject):
            _flatten(value, f"{prefix}{name}.", out)


def _torchscript_prefix(zf: zipfile.ZipFile) -> str | None:
    """The archive's folder (``"ViT-B-32/"``) when it is a TorchScript archive."""
    names = zf.namelist()
    for n in names:
        if n.endswith("data.pkl") and n.count("/") == 1:
            prefix = n[: -len("data.pkl")]
            if any(m.startswith(prefix + "code/") or m == prefix + "constants.pkl"
                   for m in names):
                return prefix
    return None


def read_clip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an OpenAI CLIP model file, without running any of its code.

    Args:
        path: OpenAI's TorchScript archive (``ViT-B-32.pt``) or a ``torch.save``d
            state dict with OpenAI's key names.

    Raises:
        ModelMissing: no such file. ModelUnsafe: the pickle needs code to load.
        ModelFormatError: not a CLIP model file.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelMissing(f"CLIP model {p} not found")
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as zf:
            prefix = _torchscript_prefix(zf)
            if prefix is not None:
                up = _ArchiveUnpickler(zf.read(prefix + "data.pkl"), zf, prefix,
                                       p.name)
                try:
                    root = up.load()
                except ModelError:
                    raise
                except (pickle.UnpicklingError, EOFError, AttributeError,
                        TypeError, ValueError) as exc:
                    raise ModelFormatError(f"{p.name}: unreadable TorchScript data "
                                           f"({exc})") from None
                if not isinstance(root, _ScriptObject):
                    raise ModelFormatError(f"{p.name}: the archive holds no module")
                state: dict[str, torch.Tensor] = {}
                _flatten(root, "", state)
                return state
    data = safe_torch_load(p, what=p.name)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor)
                                             for v in data.values()):
        raise ModelFormatError(f"{p.name} is neither OpenAI's CLIP archive nor a "
                               "state dict of tensors")
    return {str(k).removeprefix("module."): v for k, v in data.items()}


# --- the tokenizer ------------------------------------------------------------------

#: Merges CLIP reads from its vocabulary file: 49,152 − 256 − 2 lines after the header.
MERGES_USED = 49152 - 256 - 2
START, END = "<|startoftext|>", "<|endoftext|>"
_WORDS = re.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"
    r"|[^\W\d_]+|\d|(?:[^\s\w]|_)+", re.IGNORECASE)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table that CLIP's BPE works
    on: printable Latin-1 bytes stand for themselves, the other 68 bytes for
    characters from U+0100 on, in byte order."""
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    # the vocabulary lists the symbols in this order: kept bytes, then the others
    return {b: table[b] for b in keep + [b for b in range(256) if b not in keep]}


class BPETokenizer:
    """CLIP's tokenizer from its merges file (``bpe_simple_vocab_16e6.txt.gz``).

    Example::

        tok = BPETokenizer(path)
        ids = tok.tokenize(["a photo of a face."], 77)  # int64 [1, 77]
    """

    def __init__(self, path: str | Path) -> None:
        p = Path(path)
        try:
            lines = gzip.decompress(p.read_bytes()).decode("utf-8").split("\n")
        except FileNotFoundError:
            raise ModelMissing(f"CLIP vocabulary {p} not found") from None
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise ModelFormatError(f"{p.name} is not CLIP's gzipped BPE merges file "
                                   f"({exc})") from None
        merges = []
        for line in lines[1:MERGES_USED + 1]:
            pair = tuple(line.split())
            if len(pair) != 2:
                if line.strip():
                    raise ModelFormatError(f"{p.name}: a merge must be two symbols, "
                                           f"got {line!r}")
                continue
            merges.append(pair)
        symbols = list(bytes_to_unicode().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
        vocab += [START, END]
        self.encoder = {s: i for i, s in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.byte_symbols = bytes_to_unicode()
        self._cache: dict[str, list[str]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def bpe(self, word: str) -> list[str]:
        """The symbols of one word (byte symbols), merged by rank: repeatedly join
        every occurrence of the adjacent pair with the lowest merge rank."""
        if word in self._cache:
            return self._cache[word]
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda pr: self.ranks.get(pr, len(self.ranks)))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (without the start and end tokens)."""
        text = html.unescape(html.unescape(text)).strip()
        text = re.sub(r"\s+", " ", text).strip().lower()
        ids: list[int] = []
        for word in _WORDS.findall(text):
            sym = "".join(self.byte_symbols[b] for b in word.encode("utf-8"))
            ids += [self.encoder[s] for s in self.bpe(sym)]
        return ids

    def tokenize(self, texts: Sequence[str], context_length: int) -> torch.Tensor:
        """``[len(texts), context_length]`` int64: start, the text, end, zeros.

        Raises:
            EditInvalid: a text longer than the context (CLIP refuses it too).
        """
        out = torch.zeros(len(texts), context_length, dtype=torch.int64)
        for i, t in enumerate(texts):
            ids = [self.encoder[START], *self.encode(t), self.encoder[END]]
            if len(ids) > context_length:
                raise EditInvalid(f"the prompt {t!r} is {len(ids)} tokens long; CLIP "
                                  f"reads at most {context_length}",
                                  field="edits.text")
            out[i, :len(ids)] = torch.tensor(ids)
        return out
