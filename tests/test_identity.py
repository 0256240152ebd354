"""Face identity embeddings (engine/quality/identity.py): dlib ResNet,
optional ArcFace."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clips import ClipSpec, render_frames
from engine.quality.identity import (
    ARCFACE_TEMPLATE,
    ArcFaceEmbedder,
    Box,
    build_iresnet,
    DlibEmbedder,
    FaceFinder,
    five_points,
    identity_backend,
    similarity_transform,
)
from engine.models.store import models_root
from fsexchange.errors import MetricsError, ModelFormatError, ModelMissing


@pytest.fixture(scope="module")
def dlib_embedder():
    return DlibEmbedder()


def test_dlib_embeddings_separate_two_real_faces(dlib_embedder):
    finder = FaceFinder()
    astro = render_frames(ClipSpec(frames=3))
    hopper = render_frames(ClipSpec(frames=1, face="grace_hopper"))[0]
    embs = []
    for frame in astro:
        box = finder.track(frame)
        assert box is not None
        embs.append(dlib_embedder.embed(frame, box))
    other = dlib_embedder.embed(hopper, FaceFinder().track(hopper))
    for e in embs + [other]:
        assert e.shape == (128,) and e.dtype == np.float32
        assert np.linalg.norm(e) == pytest.approx(1.0, abs=1e-5)
    same = min(float(embs[0] @ e) for e in embs[1:])
    different = float(embs[0] @ other)
    assert same > 0.98
    assert different < same - 0.05


def test_finder_picks_largest_face_or_the_subject_then_follows_it():
    frames = render_frames(ClipSpec(frames=4, second_face=True, drift=(20.0, 6.0)))
    # Grace Hopper's inset (bottom left) is the larger face; the astronaut is central
    largest = FaceFinder().track(frames[0])
    assert largest is not None and largest.centre[0] < 100 and largest.centre[1] > 150
    finder = FaceFinder(subject=(160, 120))
    first = finder.track(frames[0])
    assert first is not None
    assert abs(first.centre[0] - 160) < 30 and abs(first.centre[1] - 125) < 30
    for frame in frames[1:]:
        box = finder.track(frame)
        assert box is not None and box.iou(first) > 0.3
        assert box.iou(largest) < 0.1
    # asked for the face at the inset, near() returns that one instead
    other = finder.near(frames[0], largest)
    assert other is not None and other.iou(largest) > 0.5


def test_finder_takes_a_new_face_only_after_a_long_gap():
    from engine.quality.identity import REACQUIRE_AFTER

    left = render_frames(ClipSpec(frames=1, size=(480, 240), drift=(0, 0)))[0]
    right = np.roll(left, 170, axis=1)  # the face, > 2 face sizes to the right
    grey = np.full_like(left, 128)
    finder = FaceFinder()
    first = finder.track(left)
    assert first is not None
    assert finder.track(right) is None  # too far from the face it follows
    for _ in range(REACQUIRE_AFTER - 1):
        assert finder.track(grey) is None
    box = finder.track(right)  # gone long enough: any face may be taken
    assert box is not None and box.centre[0] > first.centre[0] + 100
    assert finder.misses == 0


def test_no_face_gives_none():
    grey = np.full((240, 320, 3), 128, np.uint8)
    finder = FaceFinder()
    assert finder.track(grey) is None
    assert finder.near(grey, Box(100, 60, 200, 160)) is None


def test_similarity_transform_recovers_known_similarity():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    ang, s, t = math.radians(17), 1.7, np.array([3.0, -8.0])
    c, si = math.cos(ang), math.sin(ang)
    rot = s * np.array([[c, -si], [si, c]])
    dst = src @ rot.T + t
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-9)


def test_five_points_from_68():
    lm = np.zeros((68, 2), np.float32)
    lm[36:42] = (10, 20)
    lm[42:48] = (30, 20)
    lm[30] = (20, 30)
    lm[48], lm[54] = (12, 40), (28, 40)
    np.testing.assert_allclose(five_points(lm),
                               [[10, 20], [30, 20], [20, 30], [12, 40], [28, 40]])
    # same left-to-right order as the ArcFace template
    assert ARCFACE_TEMPLATE[0, 0] < ARCFACE_TEMPLATE[1, 0]


def test_arcface_missing_names_the_folder():
    with pytest.raises(ModelMissing) as err:
        identity_backend("arcface")
    assert str(models_root() / "arcface") in str(err.value)
    assert err.value.code == "model.missing"
    with pytest.raises(MetricsError, match="unknown identity backend"):
        identity_backend("facenet")


def _tiny_iresnet_state(features: int = 32) -> dict:
    """Random weights of an arcface_torch-style IResNet with one block per stage."""
    import torch

    torch.manual_seed(0)
    net = build_iresnet([1, 1, 1, 1], features)
    state = {}
    for k, v in net.state_dict().items():
        if v.dtype.is_floating_point and "running" not in k:
            v = torch.randn_like(v) * 0.05
        state[k] = v
    return state


def test_arcface_torch_weights_load_and_embed():
    import torch

    folder = models_root() / "arcface"
    folder.mkdir(parents=True)
    torch.save(_tiny_iresnet_state(), folder / "backbone.pth")
    emb = identity_backend("arcface")
    assert isinstance(emb, ArcFaceEmbedder)
    assert emb.name.startswith("arcface-iresnet10:backbone.pth")
    frame = render_frames(ClipSpec(frames=1))[0]
    box = FaceFinder().track(frame)
    face = emb.align(frame, box)
    assert face.shape == (112, 112, 3)
    e = emb.embed(frame, box)
    assert e.shape == (32,) and np.linalg.norm(e) == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(e, emb.embed(frame, box))


def test_arcface_rejects_a_foreign_state_dict():
    import torch

    folder = models_root() / "arcface"
    folder.mkdir(parents=True)
    torch.save({"conv.weight": torch.zeros(3)}, folder / "other.pth")
    with pytest.raises(ModelFormatError, match="IResNet"):
        identity_backend("arcface")


def _onnx_mean_colour_model() -> bytes:
    """A hand-encoded ONNX model (no onnx package needed): data [1, 3, 112, 112] ->
    GlobalAveragePool -> Flatten -> fc1 [1, 3], the face's mean colour."""

    def varint(n: int) -> bytes:
        out = b""
        while True:
            b, n = n & 0x7F, n >> 7
            out += bytes([b | (0x80 if n else 0)])
            if not n:
                return out

    def field(num: int, value) -> bytes:
        if isinstance(value, int):
            return varint(num << 3) + varint(value)
        data = value.encode() if isinstance(value, str) else value
        return varint(num << 3 | 2) + varint(len(data)) + data

    def value_info(name: str, dims: list[int]) -> bytes:
        shape = b"".join(field(1, field(1, d)) for d in dims)
        tensor = field(1, 1) + field(2, shape)  # elem_type FLOAT
        return field(1, name) + field(2, field(1, tensor))

    def node(inp: str, out: str, op: str) -> bytes:
        return field(1, inp) + field(2, out) + field(4, op)

    graph = (field(1, node("data", "pool", "GlobalAveragePool"))
             + field(1, node("pool", "fc1", "Flatten")) + field(2, "g")
             + field(11, value_info("data", [1, 3, 112, 112]))
             + field(12, value_info("fc1", [1, 3])))
    return field(1, 7) + field(7, graph) + field(8, field(1, "") + field(2, 13))


def test_arcface_onnx_weights_run_through_opencv():
    folder = models_root() / "arcface"
    folder.mkdir(parents=True)
    (folder / "w600k_r50.onnx").write_bytes(_onnx_mean_colour_model())
    emb = identity_backend("arcface")
    assert emb.name == "arcface-onnx:w600k_r50.onnx"
    frame = render_frames(ClipSpec(frames=1))[0]
    box = FaceFinder().track(frame)
    e = emb.embed(frame, box)
    # the network saw the aligned face as RGB in [-1, 1]
    face = emb.align(frame, box).astype(np.float64)
    want = (face.reshape(-1, 3).mean(0) - 127.5) / 127.5
    np.testing.assert_allclose(e, want / np.linalg.norm(want), atol=1e-4)
    (folder / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelFormatError, match="broken.onnx"):
        ArcFaceEmbedder(folder / "broken.onnx")
