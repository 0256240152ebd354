"""The job report: self-contained HTML; align-preview jobs get the subset that
exists."""

from __future__ import annotations

import re

import pytest

from engine.stages.crops import preview_frames
from engine.quality.charts import line_chart_svg
from engine.stages.report import _batching, png_data_uri
from test_pipeline_helpers import make_clip, make_job, run_engine_inprocess, submit


def test_preview_frames_spread_over_the_clip():
    assert preview_frames([3, 4]) == [3, 4]
    assert preview_frames(list(range(10, 30))) == [10, 16, 23, 29]


def test_line_chart_is_plain_svg():
    svg = line_chart_svg({"loss": [3.0, 2.0, 1.0, float("nan"), 0.5],
                          "other": [1, 1]}, title="a <title>", log_y=True)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "a &lt;title&gt;" in svg and "<script" not in svg
    # the NaN breaks "loss" into a line and a lone dot; "other" is one line
    assert svg.count("<polyline") == 2 and svg.count("<circle") == 1
    assert "no data" in line_chart_svg({}, title="x")


def test_pti_batch_is_explained_when_it_was_measured():
    """The fast recipe's PTI says whether a mini-batch paid (loss.json
    ``batching``); anything else there, damaged or hostile, says nothing."""
    record = {"batch": 4, "frame_seconds": 1.0, "batch_1_frame_seconds": 1.02,
              "gain": 0.02}
    assert _batching({"batch_size": 1, "batching": record}) == (
        " (per frame, a mini-batch of 4 measured 0.98&times; batch 1's seconds: "
        "not worth its other arithmetic)")
    assert _batching({"batch_size": 4, "batching": dict(record, gain=1.0)}).endswith(
        "0.50&times; batch 1's seconds: used)")
    for bad in (None, "4", [], {"batch": "<b>"}, {"batch": 4, "gain": -1.0},
                {"batch": 4, "gain": None}, {"batch": 4, "gain": float("nan")},
                {"batch": 4, "gain": "inf"}):
        assert _batching({"batch_size": 1, "batching": bad}) == ""
    assert _batching({}) == ""


def test_png_data_uri_roundtrip():
    import base64

    import cv2
    import numpy as np

    img = (np.arange(16 * 16 * 3) % 255).astype(np.uint8).reshape(16, 16, 3)
    uri = png_data_uri(img, height=None)
    raw = base64.b64decode(uri.split(",", 1)[1])
    back = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    assert np.array_equal(back, img)


@pytest.mark.slow
def test_align_preview_report_is_the_subset_that_exists(tmp_path):
    from fsexchange.client import job_status

    clip = make_clip(tmp_path, 4)
    ex = tmp_path / "ex"
    opts = {"profile": "tiny", "device": "cpu"}
    jid = submit(ex, make_job("preview", 4, kind="align-preview", options=opts), clip)
    run_engine_inprocess(ex)
    st = job_status(ex, jid)
    assert st.state == "done", st.error
    assert st.result.outputs["report"] == "output/report.html"
    assert "tl_id" in st.result.metrics
    html = (st.folder / "output" / "report.html").read_text()
    heads = re.findall(r"<th>([^<]+)</th>", html)
    for col in ("source", "aligned crop", "alpha", "final"):
        assert col in heads, col
    for absent in ("inversion (e4e)", "PTI reconstruction", "stitched"):
        assert absent not in heads
    assert "PTI loss" not in html and "Stitching tuning" not in html
    assert html.count("data:image/png;base64,") == 4 * 4
    assert "TL-ID" in html and "Stage timings" in html
