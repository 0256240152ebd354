"""``facestitch engine --ray``: a real local Ray cluster (2 CPUs, loopback only,
started once for the module), a real engine process as its driver.

- a job on Ray delivers the single-process run's frames, byte for byte, and its
  Result/1 apart from timings;
- a Ray worker killed (SIGKILL) during a stitching shard: Ray retries the task,
  which resumes from the batches it finished, and the frames stay the same;
- a cancel during a sharded stage stops the running tasks and frees the cluster.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scale_util import (OPTIONS, clip, comparable, frame_hashes, reference,
                        result_of, scale_job)
from test_pipeline_helpers import ROOT, submit, wait_for

# (not importorskip: ray reads RAY_ENV when it is first imported, in the fixture)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="needs the ray extra")]

#: loopback only: Ray's single-machine mode (no address but 127.0.0.1 is used)
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster with 2 CPUs on 127.0.0.1; yields (address, env)."""
    home = tmp_path_factory.mktemp("ray-home")
    env = dict(RAY_ENV, FACESTITCH_HOME=str(home))
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        import ray

        ray.init(num_cpus=2, include_dashboard=False, namespace="tests",
                 log_to_driver=False)
        address = ray.get_runtime_context().gcs_address
        assert address.startswith("127.0.0.1:"), address
        try:
            yield address, env
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def ref(cluster, tmp_path_factory):
    """The single-process reference run (same model store as the cluster)."""
    _, env = cluster
    work = tmp_path_factory.mktemp("ray-ref")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACESTITCH_HOME", env["FACESTITCH_HOME"])
        c = clip(work / "clip")
        return c, reference(work, c, "ref")


def _engine(exchange: Path, address: str, env: dict, log: Path, *extra: str
            ) -> subprocess.Popen:
    full = dict(os.environ, **env)
    full["PYTHONPATH"] = str(ROOT) + os.pathsep + full.get("PYTHONPATH", "")
    return subprocess.Popen(
        [sys.executable, "-m", "host_bridge.cli", "engine", "--exchange",
         str(exchange), "--ray", address, "--once", "--device", "cpu",
         "--threads", "1", "--no-watch", "--poll", "0.1", *extra],
        cwd=ROOT, env=full, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _finish(eng: subprocess.Popen, log: Path, timeout: float = 400) -> None:
    try:
        eng.wait(timeout=timeout)
    finally:
        if eng.poll() is None:
            eng.kill()
    assert eng.returncode == 0, log.read_text()[-4000:]


def test_ray_job_equals_single_process(cluster, ref, tmp_path):
    from fsexchange.client import job_status
    from fsexchange.documents import Progress, load_document

    address, env = cluster
    c, ref_folder = ref
    ex = tmp_path / "ex"
    submit(ex, scale_job("onray"), c)
    log = tmp_path / "engine.log"
    _finish(_engine(ex, address, env, log), log)
    st = job_status(ex, "onray")
    assert st.state == "done", (st.error, log.read_text()[-4000:])
    assert frame_hashes(st.folder) == frame_hashes(ref_folder)
    assert comparable(result_of(st.folder)) == comparable(result_of(ref_folder))
    # the units ran on Ray workers (not in the engine), in shards of the frame
    # stages; the engine wrote the job-level documents
    stitch = st.folder / "stages" / "stitch_tune"
    assert sorted(p.name for p in (stitch / "shards").iterdir()) == [
        "0-of-2.msgpack", "1-of-2.msgpack"]
    from engine.stages.units import read_unit_progress
    from engine.stages.contract import Shard

    pids = {read_unit_progress(st.folder, "stitch_tune", Shard(i, 2))["pid"]
            for i in range(2)}
    assert eng_pid_not_in(pids, log)
    prog = load_document(st.folder / "progress.msgpack", Progress)
    assert prog.state == "done" and prog.fraction == 1.0


def eng_pid_not_in(pids: set[int], log: Path) -> bool:
    """The engine process's pid (its worker id in the log) is not among ``pids``."""
    text = log.read_text()
    return not any(f":{p}:" in text.split("worker ", 1)[-1][:80] for p in pids)


def test_killed_worker_is_retried_with_the_same_frames(cluster, ref, tmp_path):
    from engine.stages.contract import Shard
    from engine.stages.units import read_unit_progress
    from fsexchange.client import job_status

    address, env = cluster
    c, ref_folder = ref
    ex = tmp_path / "ex"
    submit(ex, scale_job("killed"), c)
    log = tmp_path / "engine.log"
    eng = _engine(ex, address, env, log)
    cur = ex / "cur" / "killed"
    # shard 1/2 of stitching tunes batches 1 and 2: kill its worker once batch 1
    # is written, while it tunes batch 2
    part = cur / "stages" / "stitch_tune" / "parts" / "00001.json"
    wait_for(part.exists, 300, "stitching batch 1", eng, poll=0.01)
    unit = read_unit_progress(cur, "stitch_tune", Shard(1, 2))
    assert unit is not None and unit["fraction"] < 1.0, \
        "the shard finished before the kill; make stitching longer"
    os.kill(unit["pid"], signal.SIGKILL)
    killed = unit["pid"]
    # the engine aggregates the tasks' progress into Progress/1
    from fsexchange.documents import Progress, load_document

    def stitching_progress() -> bool:
        try:
            prog = load_document(cur / "progress.msgpack", Progress)
        except (OSError, ValueError):
            return False
        return (prog.stage == "stitch_tune" and "Ray task(s) done" in prog.message
                and 0.0 < prog.fraction < 1.0 and prog.state == "running")

    wait_for(stitching_progress, 60, "stitching progress in Progress/1", eng)
    _finish(eng, log)
    st = job_status(ex, "killed")
    assert st.state == "done", (st.error, log.read_text()[-4000:])
    # the retried task ran in another worker process and resumed after batch 1
    again = read_unit_progress(st.folder, "stitch_tune", Shard(1, 2))
    assert again["pid"] != killed and again["fraction"] == 1.0
    assert frame_hashes(st.folder) == frame_hashes(ref_folder)
    assert comparable(result_of(st.folder)) == comparable(result_of(ref_folder))


def test_cancel_during_a_sharded_stage_stops_the_tasks(cluster, tmp_path):
    import ray

    from engine.stages.contract import Shard
    from engine.stages.units import read_unit_progress
    from fsexchange.client import cancel_job, job_status

    address, env = cluster
    c = clip(tmp_path / "clip")
    ex = tmp_path / "ex"
    long = dict(OPTIONS, stitch=dict(OPTIONS["stitch"], steps=2000))
    submit(ex, scale_job("cancelled", long), c)
    log = tmp_path / "engine.log"
    eng = _engine(ex, address, env, log)
    cur = ex / "cur" / "cancelled"

    def both_running() -> bool:
        units = [read_unit_progress(cur, "stitch_tune", Shard(i, 2))
                 for i in range(2)]
        return all(u is not None and u["fraction"] > 0 for u in units)

    wait_for(both_running, 300, "both stitching shards running", eng, poll=0.05)
    t0 = time.monotonic()
    cancel_job(ex, "cancelled")
    _finish(eng, log, timeout=120)
    st = job_status(ex, "cancelled")
    assert st.state == "cancelled", st.error
    assert st.error["code"] == "cancelled", st.error
    assert st.error["stage"] == "stitch_tune", (st.error, log.read_text()[-3000:])
    print(f"\ncancelled in {time.monotonic() - t0:.1f} s")
    # the tasks stopped: both CPUs of the cluster are free for a task needing both
    @ray.remote(num_cpus=2)
    def both_cpus() -> int:
        return os.getpid()

    ref = both_cpus.remote()
    ready, _ = ray.wait([ref], timeout=30)
    assert ready, "the cancelled tasks still hold the cluster's CPUs"
    # and nothing writes into the job any more
    units = st.folder / "stages" / "stitch_tune" / "units"
    before = {p.name: p.stat().st_mtime_ns for p in units.iterdir()}
    time.sleep(1.5)
    assert {p.name: p.stat().st_mtime_ns for p in units.iterdir()} == before
    assert not cur.exists()


def test_unreachable_ray_address_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [sys.executable, "-m", "host_bridge.cli", "engine", "--exchange",
         str(tmp_path / "ex"), "--ray", f"127.0.0.1:{port}", "--once"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in r.stderr
    assert "ray start --head" in r.stderr
