"""Text-driven edits (StyleCLIP global directions, docs/reference.md "StyleCLIP global
directions") on tiny stand-ins: CLIP's tokenizer on a hand-made vocabulary, the CLIP
text tower read from OpenAI's formats (a TorchScript archive and a state dict) built
here, a tiny fs3 for the tiny generator, the job field and grammar, and the edit
stage."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import pickle
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from engine.models.formats.clip import (MERGES_USED, BPETokenizer, bytes_to_unicode,
                                        read_clip_state_dict)
from engine.models.modelset import build_tiny
from engine.models.store import (CLIP_FILE, CLIP_VOCAB_FILE, FS3_FILE, MANIFEST,
                                 Store, manifest_entry)
from engine.models.styleclip import (IMAGENET_TEMPLATES, TextEncoder,
                                     relevance_direction, text_edit_directions)
from engine.nets.clip_text import text_tower_from_state
from fsexchange.documents import Edit, Job, decode_document
from fsexchange.errors import (DocumentFieldError, EditInvalid, ModelFormatError,
                               ModelMissing, ModelUnsafe)
from fsexchange.grammar import parse_text_edit

# --- a tiny vocabulary ----------------------------------------------------------------

MERGES = [("f", "a"), ("fa", "c"), ("fac", "e</w>"), ("h", "o"), ("p", "ho")]


def _write_vocab(path, merges=MERGES):
    text = "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    path.write_bytes(gzip.compress(text.encode("utf-8")))
    return path


def _sym(c: str) -> int:
    """Vocabulary id of a single printable ASCII byte symbol."""
    return ord(c) - ord("!")


def test_tokenizer_merges_by_rank_on_a_hand_made_vocabulary(tmp_path):
    tok = BPETokenizer(_write_vocab(tmp_path / "v.txt.gz"))
    assert tok.vocab_size == 512 + len(MERGES) + 2
    assert len(bytes_to_unicode()) == 256 and MERGES_USED == 48894
    # "face": f+a (rank 0), fa+c (1), fac+e</w> (2) -> the 3rd merge symbol
    assert tok.encode("face") == [512 + 2]
    # "a" alone is the end-of-word byte symbol; case and spaces are normalised
    assert tok.encode("  A   Face ") == [256 + _sym("a"), 514]
    # "phot": h+o (rank 3) first, then p+ho (rank 4); "t" ends the word
    assert tok.encode("phot") == [512 + 4, 256 + _sym("t")]
    # punctuation is its own word; HTML entities are unescaped
    assert tok.encode("face!!") == [514, _sym("!"), 256 + _sym("!")]
    assert tok.encode("face&amp;") == tok.encode("face&")
    ids = tok.tokenize(["a face", "phot"], 8)
    assert ids.dtype == torch.int64 and ids.shape == (2, 8)
    sot, eot = tok.vocab_size - 2, tok.vocab_size - 1
    assert ids[0].tolist() == [sot, 256 + _sym("a"), 514, eot, 0, 0, 0, 0]
    with pytest.raises(EditInvalid, match="at most 4"):
        tok.tokenize(["a photo of a face"], 4)


# --- a tiny CLIP in OpenAI's layout ---------------------------------------------------

WIDTH, LAYERS, EMBED, CONTEXT = 64, 2, 32, 77


class _QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class _RefBlock(nn.Module):
    """A block as OpenAI's model builds it: torch's MultiheadAttention on [L, N, W]
    with an additive causal mask, an OrderedDict MLP."""

    def __init__(self, mask):
        super().__init__()
        self.attn = nn.MultiheadAttention(WIDTH, WIDTH // 64)
        self.ln_1 = nn.LayerNorm(WIDTH)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(WIDTH, 4 * WIDTH)), ("gelu", _QuickGELU()),
            ("c_proj", nn.Linear(4 * WIDTH, WIDTH))]))
        self.ln_2 = nn.LayerNorm(WIDTH)
        self.attn_mask = mask

    def forward(self, x):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=self.attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class _RefTransformer(nn.Module):
    def __init__(self, mask):
        super().__init__()
        self.resblocks = nn.Sequential(*[_RefBlock(mask) for _ in range(LAYERS)])

    def forward(self, x):
        return self.resblocks(x)


class _RefCLIP(nn.Module):
    """OpenAI's CLIP text side (plus a stand-in vision part and the logit scale, so
    the files hold what the real ones hold besides the text tower)."""

    def __init__(self, vocab):
        super().__init__()
        mask = torch.full((CONTEXT, CONTEXT), float("-inf")).triu_(1)
        self.visual = nn.Conv2d(3, 8, 4)
        self.transformer = _RefTransformer(mask)
        self.token_embedding = nn.Embedding(vocab, WIDTH)
        self.positional_embedding = nn.Parameter(torch.randn(CONTEXT, WIDTH) * 0.1)
        self.ln_final = nn.LayerNorm(WIDTH)
        self.text_projection = nn.Parameter(torch.randn(WIDTH, EMBED) * 0.2)
        self.logit_scale = nn.Parameter(torch.ones([]) * 4.6)

    def forward(self, text):  # encode_text
        x = self.token_embedding(text) + self.positional_embedding
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_clip")
    vocab = _write_vocab(d / CLIP_VOCAB_FILE)
    tok = BPETokenizer(vocab)
    torch.manual_seed(0)
    ref = _RefCLIP(tok.vocab_size).eval()
    with torch.no_grad():  # LayerNorm gains away from 1, so they are tested too
        for m in ref.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    tokens = tok.tokenize(["a photo of a face.", "phot face"], CONTEXT)
    archive = d / CLIP_FILE
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(ref, (tokens,)), str(archive))
    state = d / "clip_state.pt"
    torch.save(ref.state_dict(), state)
    return {"dir": d, "ref": ref, "tok": tok, "tokens": tokens, "archive": archive,
            "state": state, "vocab": vocab}


def test_clip_archive_is_read_as_data_and_matches_the_model(tiny_clip):
    ref = tiny_clip["ref"]
    with zipfile.ZipFile(tiny_clip["archive"]) as zf:  # a real TorchScript archive
        assert any("/code/" in n for n in zf.namelist())
    from_archive = read_clip_state_dict(tiny_clip["archive"])
    from_state = read_clip_state_dict(tiny_clip["state"])
    want = ref.state_dict()
    for got in (from_archive, from_state):
        assert set(got) == set(want)
        for k, v in want.items():
            torch.testing.assert_close(got[k], v, rtol=0, atol=0)
    net = text_tower_from_state(from_archive)
    assert (net.vocab_size, net.context_length, net.embed_dim) == (519, CONTEXT, EMBED)
    with torch.no_grad():
        torch.testing.assert_close(net(tiny_clip["tokens"]), ref(tiny_clip["tokens"]),
                                   rtol=1e-4, atol=1e-5)


def test_clip_archive_with_code_in_its_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > /dev/null",))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("m/data.pkl", pickle.dumps(Evil(), protocol=2))
        zf.writestr("m/constants.pkl", pickle.dumps(()))
        zf.writestr("m/code/__torch__.py", "")
    with pytest.raises(ModelUnsafe, match="system"):
        read_clip_state_dict(path)
    with pytest.raises(ModelFormatError, match="not a CLIP text tower"):
        text_tower_from_state({"visual.conv1.weight": torch.zeros(1)})


# --- text directions ------------------------------------------------------------------


def _conv_channels(G) -> int:
    return sum(c for c, rgb in zip(G.style_channels, G.style_is_torgb) if not rgb)


@pytest.fixture
def installed(tiny_clip, tmp_path):
    """The tiny CLIP, its vocabulary and a tiny fs3 (one row per conv style channel
    of the tiny generator) installed through the model store. The store's manifest
    pins the official files' hashes, so stand-ins go in under a copy without them."""
    G, _ = build_tiny()
    rng = np.random.default_rng(4)
    fs3 = rng.normal(0, 0.3, (_conv_channels(G), EMBED)).astype(np.float32)
    np.save(tmp_path / FS3_FILE, fs3)
    src = tmp_path / "src"
    src.mkdir()
    for f in (tiny_clip["archive"], tiny_clip["vocab"], tmp_path / FS3_FILE):
        (src / f.name).write_bytes(f.read_bytes())
    loose = tuple(dataclasses.replace(m, sha256=None, sha256_verified=False,
                                      size=None) for m in MANIFEST)
    Store(manifest=loose).install_from(src, accept_licence=True,
                                       names=[CLIP_FILE, CLIP_VOCAB_FILE, FS3_FILE])
    return {"G": G, "fs3": fs3.astype(np.float64)}


def _direct_delta(ref, tok, target, neutral="face"):
    """Δt straight from the reference model: template features normalised, averaged,
    normalised; the difference normalised."""
    def emb(name):
        with torch.no_grad():
            f = ref(tok.tokenize([t.format(name) for t in IMAGENET_TEMPLATES],
                                 CONTEXT)).double()
        f = f / f.norm(dim=-1, keepdim=True)
        e = f.mean(0)
        return e / e.norm()

    d = emb(target) - emb(neutral)
    return (d / d.norm()).numpy()


def test_text_edit_gives_an_s_direction_of_the_generators_shape(tiny_clip, installed):
    assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80
    G = installed["G"]
    edit = parse_text_edit("a smiling face", "4", beta=0.12)
    dirs = text_edit_directions([Edit("age", 1.0), edit], G.style_channels,
                                G.style_is_torgb)
    assert list(dirs) == [1]
    d = dirs[1]
    assert d.space == "s" and d.step_scale == 1.0 and d.name == "text_a_smiling_face"
    assert d.vector.shape == (_conv_channels(G),) == (544,)
    # against a direct computation from the reference model
    dt = _direct_delta(tiny_clip["ref"], tiny_clip["tok"], "a smiling face")
    r = installed["fs3"] @ dt
    want = np.where(np.abs(r) > 0.12, r, 0.0)
    want /= np.abs(want).max()
    np.testing.assert_allclose(d.vector, want, atol=1e-5)
    assert np.abs(d.vector).max() == pytest.approx(1.0)
    assert 0 < np.count_nonzero(d.vector) < d.vector.size
    # per style layer: conv layers get their slice, ToRGB layers zeros
    pieces = d.delta_s(4.0, G.style_channels, G.style_is_torgb)
    assert [p.shape[0] for p in pieces] == list(G.style_channels)
    assert all(not p.any() for p, rgb in zip(pieces, G.style_is_torgb) if rgb)
    np.testing.assert_allclose(np.concatenate(
        [p for p, rgb in zip(pieces, G.style_is_torgb) if not rgb]), 4 * d.vector,
        atol=1e-5)


def test_beta_too_high_and_missing_or_mismatched_files(tiny_clip, installed, tmp_path):
    G = installed["G"]
    with pytest.raises(EditInvalid, match="too high") as exc:
        text_edit_directions([parse_text_edit("a smiling face", "4", beta=0.99)],
                             G.style_channels, G.style_is_torgb)
    assert exc.value.field == "edits[0].beta"
    with pytest.raises(EditInvalid):
        relevance_direction(np.zeros((3, 2)), np.array([1.0, 0.0]), 0.0)
    # fs3 for another generator (the FFHQ-1024 one has 6048 rows)
    assert installed["fs3"].shape[0] != 6048
    with pytest.raises(ModelFormatError,
                       match=r"\(544, 32\); this generator and CLIP need \[6048, 32\]"):
        text_edit_directions([parse_text_edit("x", "1")], [6048, 3], [False, True])
    Store().path_of(FS3_FILE).unlink()
    with pytest.raises(ModelMissing) as miss:
        text_edit_directions([parse_text_edit("a smiling face", "4")],
                             G.style_channels, G.style_is_torgb)
    assert miss.value.code == "model.missing"
    # only what is missing is named, with the command that installs it
    assert "need fs3.npy in the model store" in miss.value.message
    assert "facestitch models fetch --accept-licence fs3.npy" in miss.value.message
    assert manifest_entry(CLIP_FILE).url and manifest_entry(FS3_FILE).url


def test_text_encoder_refuses_a_vocabulary_of_another_clip(tiny_clip, tmp_path):
    other = _write_vocab(tmp_path / "other.txt.gz", MERGES[:2])
    with pytest.raises(ModelFormatError, match="not from the same CLIP"):
        TextEncoder.from_files(tiny_clip["archive"], other)


# --- the job field and the grammar ----------------------------------------------------


def test_text_edit_job_field_round_trips_and_old_edits_are_unchanged():
    e = parse_text_edit("a smiling face", "0@10,4@20", beta=0.12, neutral="a face")
    assert (e.space, e.text, e.neutral, e.beta) == ("text", "a smiling face",
                                                    "a face", 0.12)
    assert e.name == "text_a_smiling_face" and len(e.keyframes) == 2
    from fsexchange.documents import FrameRange, Source
    from fractions import Fraction

    job = Job(id="j", source=Source("m.mov"), range=FrameRange(0, 30, Fraction(25)),
              edits=(Edit("age", -4.0), e))
    back = decode_document(job.to_bytes(), Job)
    assert back.edits == job.edits
    assert set(Edit("age", -4.0).to_dict()) == {"name", "strength", "keyframes",
                                                "space", "ease"}
    for bad, field in (({"text": ""}, "edits[0].text"),
                       ({"beta": 1.5}, "edits[0].beta")):
        d = {**e.to_dict(), **bad}
        with pytest.raises(DocumentFieldError) as exc:
            Edit.from_dict(d, "edits[0]")
        assert exc.value.field == field
    with pytest.raises(DocumentFieldError):
        Edit.from_dict({"name": "t", "space": "text"}, "edits[0]")
    with pytest.raises(EditInvalid, match="needs --strength"):
        parse_text_edit("a smiling face", None)
    with pytest.raises(EditInvalid, match="beta"):
        parse_text_edit("a smiling face", "4", beta=-0.1)


def test_submit_builds_a_text_edit_job(tmp_path):
    from clips import ClipSpec, render_frames, write_clip
    from host_bridge.commands.submit import build_parser, job_from_args

    clip = write_clip(tmp_path / "c.mp4", render_frames(ClipSpec(frames=3)))
    args = build_parser().parse_args([
        str(clip), "--exchange", str(tmp_path / "ex"), "--edit", "age=-2",
        "--edit-text", "a smiling face", "--strength", "4", "--beta", "0.12",
        "--profile", "tiny"])
    job, _ = job_from_args(args, [])
    assert [e.space for e in job.edits] == ["w", "text"]
    assert job.edits[1].to_dict() == {
        "name": "text_a_smiling_face", "strength": 4.0, "keyframes": [],
        "space": "text", "ease": "smooth", "text": "a smiling face",
        "neutral": "face", "beta": 0.12}
    args = build_parser().parse_args([str(clip), "--exchange", str(tmp_path / "ex"),
                                      "--edit", "age=-2", "--strength", "4"])
    with pytest.raises(EditInvalid, match="belong to --edit-text"):
        job_from_args(args, [])


# --- through the stages ---------------------------------------------------------------


@pytest.mark.slow
def test_text_edit_runs_through_the_edit_stage(tiny_clip, installed, tmp_path,
                                               one_thread):
    import shutil

    from engine.stages.contract import StageContext
    from engine.stages.pipeline import run_pipeline, stages_for
    from fsexchange.documents import FrameRange, Source
    from fsexchange.options import PipelineConfig
    from test_pipeline_helpers import RATE, make_clip

    clip = make_clip(tmp_path / "clip", 3)
    job_dir = tmp_path / "job"
    (job_dir / "media").mkdir(parents=True)
    shutil.copy(clip, job_dir / "media" / "clip.mp4")
    text = parse_text_edit("a smiling face", "0@0,4@2", beta=0.12, neutral="face")
    options = {"profile": "tiny", "device": "cpu", "pti": {"steps": 1}}
    job = Job(id="text", source=Source("media/clip.mp4"),
              range=FrameRange(0, 3, RATE), edits=(Edit("smile", 2.0), text),
              options=options)
    ctx = StageContext(job=job, job_dir=job_dir,
                       config=PipelineConfig.from_options(options))
    run_pipeline(stages_for("stitch", until="edit"), ctx)

    files = ctx.files.edit
    dirs = files.text_directions()
    assert list(dirs) == [1] and dirs[1].shape == (544,)
    G = ctx.files.pti.generator()
    latents = np.load(files.latents_path)
    with torch.no_grad():
        plain = [s.numpy() for s in G.styles(torch.from_numpy(latents))]
    with np.load(files.styles_path) as z:
        edited = [z[f"s{i:02d}"] for i in range(G.num_styles)]
    strength = np.array([0.0, 2.0, 4.0])  # smoothstep between the two keyframes
    k = 0
    for s0, s1, c, rgb in zip(plain, edited, G.style_channels, G.style_is_torgb):
        if rgb:
            np.testing.assert_array_equal(s1, s0)
        else:
            want = s0 + strength[:, None] * dirs[1][k:k + c][None]
            np.testing.assert_allclose(s1, want, atol=1e-4)
            k += c
    curves = json.loads(files.curves_path.read_text())
    entry = curves["edits"][1]
    assert entry["space"] == "text" and entry["text"] == "a smiling face"
    assert entry["beta"] == 0.12 and entry["strength"][:3] == [0.0, 2.0, 4.0]


@pytest.mark.slow
def test_text_edit_without_its_files_fails_before_tuning(tmp_path, one_thread):
    import shutil

    from engine.stages.contract import StageContext
    from engine.stages.pipeline import run_pipeline, stages_for
    from fsexchange.documents import FrameRange, Source
    from fsexchange.options import PipelineConfig
    from test_pipeline_helpers import RATE, make_clip

    clip = make_clip(tmp_path / "clip", 2)
    job_dir = tmp_path / "job"
    (job_dir / "media").mkdir(parents=True)
    shutil.copy(clip, job_dir / "media" / "clip.mp4")
    options = {"profile": "tiny", "device": "cpu"}
    job = Job(id="text", source=Source("media/clip.mp4"),
              range=FrameRange(0, 2, RATE),
              edits=(parse_text_edit("a smiling face", "4"),), options=options)
    ctx = StageContext(job=job, job_dir=job_dir,
                       config=PipelineConfig.from_options(options))
    with pytest.raises(ModelMissing) as exc:
        run_pipeline(stages_for("stitch"), ctx)
    assert exc.value.stage == "invert"
    for name in (CLIP_FILE, CLIP_VOCAB_FILE, FS3_FILE):
        assert name in exc.value.message
    assert not ctx.files.pti.folder.exists()

