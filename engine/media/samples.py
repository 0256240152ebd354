"""Real faces for the demo, the benchmark and the tests, offline.

The stills are public-domain photographs shipped inside common packages:
scikit-image's ``astronaut`` (Eileen Collins, NASA) and matplotlib's
``grace_hopper.jpg`` (US Navy). :func:`astronaut_clip` animates the first into a
short handheld-like H.264 close-up (``facestitch demo``, ``bench/pipeline.py``).
Needs scikit-image or matplotlib for the stills (the ``dev`` extra).
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from engine.media.video import MovieWriter

__all__ = ["FACE_CENTRES", "RATE", "face_image", "astronaut_clip"]

#: Approximate face centres (x, y) in the original stills (dlib boxes).
FACE_CENTRES = {"astronaut": (222.0, 125.0), "grace_hopper": (273.0, 232.0)}
#: Frame rate of :func:`astronaut_clip`.
RATE = Fraction(25)


def face_image(name: str = "astronaut") -> np.ndarray:
    """HxWx3 uint8 RGB still with a real face."""
    if name == "astronaut":
        from skimage import data

        return np.ascontiguousarray(data.astronaut())
    if name == "grace_hopper":
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(path)
        return np.ascontiguousarray(img[:, :, ::-1])
    raise ValueError(name)



def astronaut_clip(path: Path, frames: int = 14, size: tuple[int, int] = (320, 240),
                   face_scale: float = 0.6) -> Path:
    """Write a short H.264 clip of the astronaut still with smooth motion (a slow
    drift, a small zoom and an in-plane turn), like a handheld close-up."""
    img = face_image("astronaut")
    cx, cy = FACE_CENTRES["astronaut"]
    w, h = size
    with MovieWriter(path, RATE, size) as mw:
        for t in range(frames):
            phase = 2 * math.pi * t / max(frames, 1)
            m = cv2.getRotationMatrix2D((cx, cy), 4.0 * math.sin(phase),
                                        face_scale * (1 + 0.05 * math.sin(phase)))
            m[0, 2] += w / 2 + 10 * math.sin(phase) - cx
            m[1, 2] += h / 2 + 5 * math.cos(phase) - cy
            mw.write(cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REFLECT))
    return path
