"""Data-parallel PTI and temporal refinement over several devices
(engine/stages/parallel.py, docs/scale.md "Data-parallel PTI and refinement").

On this machine the devices are two CPU processes (``--devices cpu,cpu``, gloo),
one intra-op thread each (the job records 1 thread, every rank pins it). A
data-parallel stage must tune the generator a single process tunes with the same
batch, within float rounding: the tolerance below is what the order of the sums
allows (measured up to 0.002), while averaging the ranks' gradients without
their slice weights (batches of 3 split 2 + 1) was off by 0.04, 20 times more.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scale_util import edits
from test_pipeline_helpers import ROOT, make_clip, make_job

N = 6
#: PTI batches of 5 and 1 (two ranks take 3 + 2 frames: unequal slices must be
#: weighted; then 1 + 0: a rank without rows still steps), refinement batches of
#: 5 pairs (3 + 2); float32 (this CPU would choose bfloat16)
OPTIONS = {
    "profile": "tiny", "device": "cpu", "dtype": "float32",
    "invert": {"batch_size": 2},
    "pti": {"steps": 6, "lr": 1e-3, "batch_size": 5},
    "refine": {"batch_size": 5},
    "stitch": {"steps": 20, "batch_size": 2},
    "metrics": {"enabled": False},
}
#: |θ_parallel − θ_single| / |θ_single − θ_start| over the tuned parameters
TOLERANCE = 0.01


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "host_bridge.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _folder(work: Path, job_id: str, options: dict | None = None) -> Path:
    folder = work / job_id
    (folder / "media").mkdir(parents=True)
    shutil.copy(make_clip(work / "clip", N), folder / "media" / "clip.mp4")
    job = make_job(job_id, N, edits=edits(), options=options or OPTIONS)
    (folder / "job.msgpack").write_bytes(job.to_bytes())
    return folder


def _through(folder: Path, last: str) -> None:
    from engine.stages.units import run_unit

    for stage in ("track", "align", "invert", "pti", "edit", "refine"):
        run_unit(folder, stage, device="cpu", threads=1)
        if stage == last:
            return


def _relative_diff(got: dict, want: dict, start: dict) -> float:
    keys = [k for k in want if k.startswith("synthesis")]
    d = sum(float((got[k] - want[k]).double().square().sum()) for k in keys)
    c = sum(float((want[k] - start[k]).double().square().sum()) for k in keys)
    assert c > 0
    return (d / c) ** 0.5


def _ranks(root_pid: int) -> set[int]:
    """Spawned multiprocessing children below ``root_pid`` (the ranks)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    out = set()
    for pid in parent:
        p = pid
        while p in parent and p != root_pid and p > 1:
            p = parent[p]
        if p == root_pid and pid != root_pid:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmd:
                out.add(pid)
    return out


def _gone(pids: set[int]) -> bool:
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            return False
    return True


def test_parse_devices():
    from engine.stages.parallel import parse_devices, slices

    assert parse_devices("cpu,cpu") == ("cpu", "cpu")
    assert parse_devices("cuda:0, cuda:1") == ("cuda:0", "cuda:1")
    assert parse_devices("cuda,cuda:1") == ("cuda:0", "cuda:1")
    assert parse_devices("cuda:3") == ("cuda:3",)
    for bad, words in (("cpu,gpu", "'gpu' is not a device"),
                       ("cuda:0,cuda:0", "a GPU is named twice"),
                       ("cpu,cuda:0", "mix of CPU and CUDA"),
                       ("cpu,,cpu", "comma-separated list"),
                       ("auto,auto", "'auto' is not a device")):
        with pytest.raises(ValueError, match=words):
            parse_devices(bad)
    # every row of a batch goes to exactly one rank, rank 0 never empty
    for n in range(1, 9):
        for w in range(1, 5):
            parts = slices(n, w)
            assert [i for r in parts for i in r] == list(range(n))
            assert len(parts[0]) > 0
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_bad_devices_are_refused_at_the_edge(tmp_path):
    folder = tmp_path / "none"
    r = _cli("stage", "run", str(folder), "pti", "--devices", "cpu,gpu0")
    assert r.returncode == 2
    assert "--devices 'cpu,gpu0': 'gpu0' is not a device (cpu, cuda or cuda:N)" \
        in r.stderr
    r = _cli("engine", "--exchange", str(tmp_path / "ex"), "--devices",
             "cuda:1,cuda:1", "--once")
    assert r.returncode == 2 and "a GPU is named twice" in r.stderr
    r = _cli("engine", "--exchange", str(tmp_path / "ex"), "--devices", "cpu,cpu",
             "--workers", "2", "--once")
    assert r.returncode == 2 and "use it with --workers 1" in r.stderr, r.stderr
    assert not (tmp_path / "ex").exists()


@pytest.mark.slow
def test_pti_and_refine_data_parallel_equal_one_process(tmp_path):
    """PTI through ``facestitch stage run --devices cpu,cpu`` and refinement through
    ``run_unit(devices=...)`` tune what one process tunes within float rounding;
    the job's frames are produced after them."""
    import torch

    from engine.models.modelset import load_models
    from engine.stages.outputs import JobFiles
    from engine.stages.units import run_unit

    one = _folder(tmp_path, "one")
    _through(one, "invert")
    two = tmp_path / "two"
    shutil.copytree(one, two)
    run_unit(one, "pti", device="cpu", threads=1)
    r = _cli("stage", "run", str(two), "pti", "--devices", "cpu,cpu")
    assert r.returncode == 0, r.stderr
    assert "pti stage: done" in r.stdout
    g1, g2 = JobFiles(one).pti.generator("cpu"), JobFiles(two).pti.generator("cpu")
    start = load_models("tiny", device="cpu").generator.state_dict()
    d_pti = _relative_diff(g2.state_dict(), g1.state_dict(), start)
    print(f"PTI: weights apart {d_pti:.2e} of the tuning's change")
    assert d_pti < TOLERANCE
    done = JobFiles(two).done("pti")
    assert done.facts["devices"] == ["cpu", "cpu"]
    assert done.facts["batch_size"] == 5
    l1 = JobFiles(one).pti.loss()
    l2 = JobFiles(two).pti.loss()
    for a, b in zip(l1["passes"], l2["passes"]):  # whole-batch means, not rank 0's
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    assert l2["after"]["mse"] == pytest.approx(l1["after"]["mse"], rel=1e-3)
    assert not (two / "stages" / "pti" / "checkpoint.pt").exists()
    assert not (two / "stages" / "pti" / "parallel").exists()  # the store is gone

    # refinement: both phases (mapper, then a generator copy), batches 5 = 3 + 2,
    # from the same PTI generator (the one-process one) in both folders
    shutil.rmtree(two / "stages" / "pti")
    shutil.copytree(one / "stages" / "pti", two / "stages" / "pti")
    for f in (one, two):
        run_unit(f, "edit", device="cpu", threads=1)
    run_unit(one, "refine", device="cpu", threads=1)
    out = run_unit(two, "refine", devices=("cpu", "cpu"), threads=1)
    assert out.facts["devices"] == ["cpu", "cpu"]
    assert any("DIS flow" in w for w in out.warnings)  # rank 0's warnings come back
    r1, r2 = JobFiles(one).refine, JobFiles(two).refine
    pti = JobFiles(one).pti.generator("cpu").state_dict()
    d_ref = _relative_diff(r2.generator("cpu").state_dict(),
                           r1.generator("cpu").state_dict(), pti)
    print(f"refine: weights apart {d_ref:.2e} of the refinement's change")
    assert d_ref < TOLERANCE
    lat_edit = np.load(JobFiles(one).edit.latents_path)
    la, lb = (np.load(r.latents_path).astype(np.float64) for r in (r1, r2))
    # norms, not the largest element: the mapper moves latents of magnitude ~1
    # by ~1e-5, so one float32 step (1.2e-7 at 1.5) is a percent of that
    d_lat = np.linalg.norm(lb - la) / np.linalg.norm(la - lat_edit)
    print(f"refine: latents apart {d_lat:.2e} of the refinement's change")
    assert d_lat < TOLERANCE

    # the rest of the job runs on the refined outputs and delivers its frames
    for stage in ("stitch_tune", "paste", "report"):
        run_unit(two, stage, device="cpu", threads=1)
    frames = sorted((two / "output").rglob("*.png"))
    assert len([f for f in frames if "preview" not in f.parts]) >= N
    assert torch.get_num_threads() >= 1


@pytest.mark.slow
def test_killed_rank_fails_the_stage_and_resumes(tmp_path):
    """SIGKILL one rank during training: the unit fails with
    ``parallel.rank_failed`` naming the device, no rank survives, and the next run
    resumes from the last checkpoint."""
    from engine.stages.outputs import JobFiles

    opts = {**OPTIONS, "pti": {**OPTIONS["pti"], "steps": 400, "lr": 1e-4,
                               "checkpoint_every": 1}}
    folder = _folder(tmp_path, "kill", opts)
    _through(folder, "invert")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "host_bridge.cli", "stage", "run",
                             str(folder), "pti", "--devices", "cpu,cpu"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    ckpt = JobFiles(folder).pti.checkpoint_path
    ranks: set[int] = set()
    try:
        t_end = time.monotonic() + 240
        while not ckpt.exists() and time.monotonic() < t_end:
            assert proc.poll() is None, proc.communicate()
            ranks |= _ranks(proc.pid)
            time.sleep(0.2)
        ranks |= _ranks(proc.pid)
        assert ckpt.exists() and len(ranks) == 2, ranks
        victim = max(ranks)  # spawned second: rank 1
        os.kill(victim, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, err
    assert "[parallel.rank_failed]" in err
    assert "(rank 1 of 2) was killed (SIGKILL)" in err, err
    deadline = time.monotonic() + 10
    while not _gone(ranks) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _gone(ranks)  # no orphan rank
    assert JobFiles(folder).done("pti") is None

    # the next run (here one device: the same arithmetic) resumes from it
    from engine.stages.units import run_unit
    from engine.stages.contract import load_checkpoint
    import json

    at = json.loads(load_checkpoint(ckpt)["state"])["pass"]
    assert at >= 1
    short = {**opts, "pti": {**opts["pti"], "steps": at + 2}}
    from test_pipeline_helpers import make_job as mk

    (folder / "job.msgpack").write_bytes(mk("kill", N, edits=edits(),
                                            options=short).to_bytes())
    out = run_unit(folder, "pti", devices=("cpu", "cpu"), threads=1)
    assert out.info["pti_resumed_at_pass"] == at
    assert len(JobFiles(folder).pti.loss()["passes"]) == at + 2


@pytest.mark.slow
def test_cancel_stops_every_rank_and_keeps_a_checkpoint(tmp_path):
    """The stage's abort check stops all ranks after the same step; rank 0 keeps
    a checkpoint; no rank is left."""
    from engine.stages.contract import StageAborted
    from engine.stages.outputs import JobFiles
    from engine.stages.units import run_unit

    opts = {**OPTIONS, "pti": {**OPTIONS["pti"], "steps": 100, "lr": 1e-4}}
    folder = _folder(tmp_path, "cancel", opts)
    _through(folder, "invert")
    passes: list[int] = [0]
    ranks: set[int] = set()

    def progress(fraction: float, message: str) -> None:
        if "pti: pass " in message:  # "pti: pass 3/100, loss …"
            passes.append(int(message.split("pass ")[1].split("/")[0]))
        ranks.update(_ranks(os.getpid()))

    t0 = time.monotonic()
    with pytest.raises(StageAborted):
        run_unit(folder, "pti", devices=("cpu", "cpu"), threads=1,
                 progress=progress,
                 abort_fn=lambda: max(passes) >= 3)
    assert time.monotonic() - t0 < 120
    assert len(ranks) == 2 and _gone(ranks)
    assert JobFiles(folder).pti.checkpoint_path.exists()
    assert JobFiles(folder).done("pti") is None
    assert max(passes) < 20  # stopped promptly


@pytest.mark.slow
def test_batch_smaller_than_devices_is_refused(tmp_path):
    """The reference recipe (batch 1, frames in order) over 2 devices: refused
    with ``parallel.refused`` (one device would idle), nothing completed."""
    from engine.stages.outputs import JobFiles
    from engine.stages.units import run_unit
    from fsexchange.errors import DataParallelRefused

    opts = {**OPTIONS, "recipe": "reference"}  # batch 1, frames in order
    folder = _folder(tmp_path, "refused", opts)
    _through(folder, "invert")
    with pytest.raises(DataParallelRefused, match="fewer than the 2 devices") as e:
        run_unit(folder, "pti", devices=("cpu", "cpu"), threads=1)
    assert e.value.code == "parallel.refused" and e.value.stage == "pti"
    assert "--recipe fast" in e.value.message
    assert JobFiles(folder).done("pti") is None


@pytest.mark.gpu
@pytest.mark.slow
def test_pti_data_parallel_on_two_gpus_equals_one(tmp_path):
    """NCCL over two GPUs: the same generator as one GPU within rounding."""
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    from engine.models.modelset import load_models
    from engine.stages.outputs import JobFiles
    from engine.stages.units import run_unit

    opts = {**OPTIONS, "device": "cuda"}
    one = _folder(tmp_path, "g1", opts)
    for stage in ("track", "align", "invert"):
        run_unit(one, stage, device="cuda:0", threads=1)
    two = tmp_path / "g2"
    shutil.copytree(one, two)
    run_unit(one, "pti", device="cuda:0", threads=1)
    out = run_unit(two, "pti", devices=("cuda:0", "cuda:1"), threads=1)
    assert out.facts["devices"] == ["cuda:0", "cuda:1"]
    start = load_models("tiny", device="cpu").generator.state_dict()
    got = JobFiles(two).pti.generator("cpu").state_dict()
    want = JobFiles(one).pti.generator("cpu").state_dict()
    assert _relative_diff(got, want, start) < TOLERANCE


@pytest.mark.slow
def test_engine_runs_a_job_with_devices(tmp_path):
    """``facestitch engine --devices cpu,cpu``: the job completes, its PTI and
    refinement ran data-parallel (their facts name the devices), the other stages
    on the first device."""
    from fsexchange.client import job_status
    from test_pipeline_helpers import submit

    ex = tmp_path / "ex"
    submit(ex, make_job("eng", N, edits=edits(), options=OPTIONS),
           make_clip(tmp_path / "clip", N))
    r = _cli("engine", "--exchange", str(ex), "--once", "--no-watch", "--devices",
             "cpu,cpu", "--threads", "1", timeout=600)
    assert r.returncode == 0, r.stderr
    st = job_status(ex, "eng")
    assert st.state == "done", st.error
    from engine.stages.outputs import JobFiles

    files = JobFiles(st.folder)
    facts = {n: files.done(n).facts for n in ("pti", "refine", "stitch_tune")}
    assert facts["pti"]["devices"] == ["cpu", "cpu"]
    assert facts["refine"]["devices"] == ["cpu", "cpu"]
    assert "devices" not in facts["stitch_tune"]
    assert len(st.result.frames) == N
