"""``torch.load(weights_only=True)`` with a tiny, explicit allowance of extra
globals (numpy scalars, argparse.Namespace) for the official training checkpoints;
anything else raises :class:`ModelUnsafe` naming the global.
"""

from __future__ import annotations

import importlib
import io
import pickle
from pathlib import Path
from typing import Any

import torch

from fsexchange.errors import ModelFormatError, ModelMissing, ModelUnsafe


#: Globals admitted on top of torch's weights_only set, by checkpoint kind.
_NUMPY_SCALAR = (
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype",
    "numpy.dtypes.Float64DType", "numpy.dtypes.Float32DType",
    "numpy.dtypes.Int64DType", "numpy.dtypes.Int32DType", "numpy.dtypes.BoolDType",
)
_ARGPARSE = ("argparse.Namespace",)


def _numpy_dtype_classes() -> list[Any]:
    import numpy as np

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
