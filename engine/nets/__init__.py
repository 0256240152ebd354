"""Networks in our own code: StyleGAN2 (``stylegan2``), the e4e encoder (``e4e``),
LPIPS (``lpips``), the BiSeNet face parser (``bisenet``), CLIP's text tower
(``clip_text``), StyleCLIP's levels mapper (``mapper``, the temporal
refinement's latent residual) and the StyleGAN2 ops with their exact reference
paths (``ops``).

May import torch and ``fsexchange`` (for its errors) only. Importing this package
imports nothing heavy; import the submodules you need (each imports torch).
"""

__all__ = ["ops", "stylegan2", "e4e", "lpips", "bisenet", "clip_text", "mapper"]
