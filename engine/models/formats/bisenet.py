"""BiSeNet ``79999_iter.pth`` (face-parsing.PyTorch): a plain state dict, loaded
with ``weights_only``.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from engine.models.formats.safe_load import safe_torch_load
from fsexchange.errors import ModelFormatError


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
