"""Networks in our own code: StyleGAN2 (``stylegan2``), the e4e encoder (``e4e``),
LPIPS (``lpips``), their reference ops (``ops``) and the BiSeNet face parser
(``bisenet``, engineer B). Importing this package imports nothing heavy; import the
submodules you need (each imports torch)."""

__all__ = ["ops", "stylegan2", "e4e", "lpips"]
