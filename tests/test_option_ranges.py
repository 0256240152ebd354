"""Every numeric job option has a documented range (issue 14, defect 6), checked
finite and inside it by the one validation that runs at submit (``build_job``)
and in the engine (``PipelineConfig.from_options``); docs/protocol.md "Job
options" lists exactly these ranges and defaults."""

from __future__ import annotations

import math
import re
from dataclasses import fields
from fractions import Fraction

import pytest

from engine_harness_util import ROOT
from fsexchange.client import build_job
from fsexchange.documents import FrameRange, Source
from fsexchange.errors import DocumentFieldError
from fsexchange.options import _SECTIONS, OPTION_RANGES, PipelineConfig

DOC = (ROOT / "docs" / "protocol.md").read_text()


def numeric_options() -> dict[str, object]:
    """``section.key`` (and ``seed``) -> default, for every numeric option."""
    out: dict[str, object] = {"seed": PipelineConfig().seed}
    for section, cls in _SECTIONS.items():
        for f in fields(cls):
            default = f.default
            if default is None or (isinstance(default, (int, float))
                                   and not isinstance(default, bool)):
                out[f"{section}.{f.name}"] = default
    return out


def options_for(name: str, value) -> dict:
    if "." not in name:
        return {name: value}
    section, key = name.split(".")
    return {section: {key: value}}


def test_every_numeric_option_has_a_range_and_its_default_is_inside():
    numeric = numeric_options()
    assert set(OPTION_RANGES) == set(numeric)
    for name, default in numeric.items():
        if default is not None:
            assert OPTION_RANGES[name].accepts(default), name
            PipelineConfig.from_options(options_for(name, default))


@pytest.mark.parametrize("name", sorted(OPTION_RANGES))
def test_values_outside_the_range_are_refused_by_submit_and_engine(name):
    rng = OPTION_RANGES[name]
    integer = isinstance(numeric_options()[name], int) or name in (
        "seed", "edit.freeze_fine_layers")
    bad = [rng.hi + 1, rng.lo - 1]
    if rng.above:
        bad.append(rng.lo)
    if not integer:
        bad += [math.nan, math.inf, -math.inf]
    for value in bad:
        value = int(value) if integer and math.isfinite(value) else value
        with pytest.raises(DocumentFieldError) as info:
            PipelineConfig.from_options(options_for(name, value))  # the engine's
        assert info.value.field == f"options.{name}"
        with pytest.raises(DocumentFieldError):  # what every client submits with
            build_job(source=Source("m.mov"), range=FrameRange(0, 2, Fraction(24)),
                      options=options_for(name, value))


def test_resolution_is_a_power_of_two_and_steps_are_bounded():
    for ok in (0, 8, 64, 256, 1024, 4096):
        assert PipelineConfig.from_options({"align": {"resolution": ok}})
    for bad in (96, 1000, 2**20, 8192, -256, 4):
        with pytest.raises(DocumentFieldError, match="power of two"):
            PipelineConfig.from_options({"align": {"resolution": bad}})
    with pytest.raises(DocumentFieldError, match="100000"):
        PipelineConfig.from_options({"pti": {"steps": 10**15}})
    with pytest.raises(DocumentFieldError, match="greater than 0"):
        PipelineConfig.from_options({"stitch": {"lr": 0}})


def test_docs_list_every_option_with_its_default_and_range():
    section = DOC.split("## Job options", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `options\.([^`]+)` \| ([^|]+) \| ([^|]+) \|$", section,
                      flags=re.M)
    documented = {name: (default.strip(), text.strip()) for name, default, text in rows}
    assert set(documented) == set(OPTION_RANGES), "docs/protocol.md Job options"
    for name, default in numeric_options().items():
        shown = "none" if default is None else (
            f"{default:g}" if isinstance(default, float) else str(default))
        assert documented[name] == (shown, OPTION_RANGES[name].text()), name
