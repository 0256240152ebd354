"""Automatic batch sizes, their persistence across a resumed stage, and the
training precision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.stages.batching import (MAX_AUTO_BATCH, PER_FRAME_GIB_1024, auto_batch,
                             free_memory, stage_settings)
from fsexchange.options import PipelineConfig
from engine.devices import native_bf16, resolve_dtype
from fsexchange.errors import DocumentFieldError


def test_auto_batch_follows_memory_resolution_and_clip_length():
    free = free_memory("cpu")
    assert free > 0
    # the tiny profile (64 px) is limited by the clip and the cap, not by memory
    assert auto_batch("pti", 64, "cpu", frames=5) == 5
    assert auto_batch("stitch", 64, "cpu", frames=500) == MAX_AUTO_BATCH
    # the official size: half the free memory over the per-frame estimate
    for kind in ("pti", "stitch"):
        want = int(0.5 * free // (PER_FRAME_GIB_1024[kind] * (1 << 30)))
        assert auto_batch(kind, 1024, "cpu", frames=500) == max(1, min(
            want, MAX_AUTO_BATCH))
    assert auto_batch("pti", 1024, "cpu", frames=0) == 1


def test_stage_settings_are_kept_for_a_resumed_stage(tmp_path: Path):
    calls = []

    def resolve(value: int):
        def f():
            calls.append(value)
            return {"batch_size": value, "dtype": "bfloat16"}
        return f

    first = stage_settings(tmp_path, resolve(12))
    # another worker with other memory takes the job over: same batches
    again = stage_settings(tmp_path, resolve(3))
    assert first == again == {"batch_size": 12, "dtype": "bfloat16"}
    assert calls == [12]
    assert json.loads((tmp_path / "settings.json").read_text())["batch_size"] == 12
    # a damaged file is resolved again, not a crash
    (tmp_path / "settings.json").write_text("{not json")
    assert stage_settings(tmp_path, resolve(4))["batch_size"] == 4


def test_dtype_option_and_resolution():
    assert PipelineConfig().dtype == "auto"
    assert PipelineConfig().pti.batch_size == 0
    assert PipelineConfig().stitch.batch_size == 0
    for v in ("auto", "float32", "bfloat16"):
        assert PipelineConfig.from_options({"dtype": v}).dtype == v
    with pytest.raises(DocumentFieldError):
        PipelineConfig.from_options({"dtype": "float16"})
    for bad in ({"pti": {"batch_size": -1}}, {"stitch": {"batch_size": "auto"}}):
        with pytest.raises(DocumentFieldError, match="batch_size"):
            PipelineConfig.from_options(bad)
    assert resolve_dtype("float32", "cpu") == "float32"
    assert resolve_dtype("bfloat16", "cpu") == "bfloat16"
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert native_bf16("cpu") == native
    assert resolve_dtype("auto", "cpu") == ("bfloat16" if native else "float32")
    if not torch.cuda.is_available():
        assert native_bf16("cuda") is False
