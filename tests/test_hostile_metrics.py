"""``facestitch metrics --edited X/done/JOB/output`` (issue 14, defect 11): the
documented use reads exactly the frames the job's ``Result/1`` lists. The output
folder of an align-preview job also holds ``contact_sheet.png`` (and a preview
movie and a report), which a folder glob took for a frame of another sequence."""

from __future__ import annotations

import json

import pytest

from host_bridge.cli import main as cli
from test_pipeline_helpers import make_clip, make_job, run_engine_inprocess, submit

pytestmark = pytest.mark.slow  # a real align-preview job, then the metrics


def test_metrics_of_a_finished_job_read_its_result_frames(tmp_path, capsys):
    from fsexchange.client import job_status

    clip = make_clip(tmp_path, 5)
    ex = tmp_path / "ex"
    opts = {"profile": "tiny", "device": "cpu", "metrics": {"enabled": False}}
    job = make_job("pv", 5, kind="align-preview", options=opts)
    jid = submit(ex, job, clip)
    run_engine_inprocess(ex)
    st = job_status(ex, jid)
    assert st.state == "done", st.error
    output = st.folder / "output"
    assert (output / "contact_sheet.png").is_file()  # what broke the glob
    for edited in (output, st.folder):
        capsys.readouterr()
        assert cli(["metrics", "--source", str(clip), "--edited", str(edited),
                    "--json", "--flow", "farneback"]) == 0
        d = json.loads(capsys.readouterr().out)
        assert d["frames"] == 5 and d["range"] == [0, 5]
    capsys.readouterr()  # the job covers the whole clip: any range of it works
    assert cli(["metrics", "--source", str(clip), "--edited", str(output),
                "--range", "1:4", "--json", "--flow", "farneback"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["frames"] == 3 and d["range"] == [1, 4]
