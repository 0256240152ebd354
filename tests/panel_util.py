"""Helpers for the job panel's tests: a real ``facestitch panel`` process bound to
127.0.0.1 on a free port, plain HTTP requests to it (bounded by timeouts), and
jobs moved through the exchange the way an engine moves them (claim, progress,
finish) for the states a test needs without running a pipeline."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

from engine_harness_util import wait_until  # noqa: F401  (the tests import it here)
from fsexchange.client import build_job, submit_job
from fsexchange.documents import Edit, FrameRange, Progress, Result, Source
from fsexchange.exchange import PROGRESS_FILE, Exchange, utc_now
from fsexchange.fsutil import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]


class Panel:
    """A running panel process; ``state`` is what it wrote to its state file."""

    def __init__(self, proc: subprocess.Popen, state: dict[str, Any],
                 log: Path) -> None:
        self.proc, self.state, self.log = proc, state, log

    @property
    def port(self) -> int:
        return int(self.state["port"])

    @property
    def token(self) -> str:
        return str(self.state["token"])

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return str(self.state["url"])

    def request(self, method: str, path: str, *, body: Any = None,
                headers: dict[str, str] | None = None, timeout: float = 20.0
                ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request; ``(status, headers, body)``."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = None if body is None else (
                body if isinstance(body, bytes) else json.dumps(body).encode())
            conn.request(method, path, body=data, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, \
                resp.read()
        finally:
            conn.close()

    def get_json(self, path: str) -> Any:
        status, _, data = self.request("GET", path)
        assert status == 200, (status, data)
        return json.loads(data)

    def post(self, path: str, body: Any = None, **extra: str
             ) -> tuple[int, dict[str, Any]]:
        """A state-changing request as the page makes it (token, same origin)."""
        headers = {"Content-Type": "application/json",
                   "X-FaceStitch-Token": self.token, "Origin": self.origin}
        headers.update(extra)
        status, _, data = self.request("POST", path, body=body or {},
                                       headers=headers)
        return status, json.loads(data or b"{}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_panel(exchange: Path, workdir: Path, *args: str,
                timeout: float = 60.0) -> Panel:
    """``facestitch panel --exchange EXCHANGE --port 0`` on 127.0.0.1; returns once
    it has written its state file (it then serves)."""
    workdir.mkdir(parents=True, exist_ok=True)
    state = workdir / f"panel-{time.monotonic_ns()}.json"
    log = state.with_suffix(".log")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("FACESTITCH_PANEL_TOKEN", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "host_bridge.cli", "panel", "--exchange",
             str(exchange), "--host", "127.0.0.1", "--port", "0", "--state-file",
             str(state), "--poll", "0.2", *args],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the panel exited ({proc.returncode}):\n"
                                 f"{log.read_text(errors='replace')}")
        try:
            data = json.loads(state.read_text())
        except (OSError, ValueError):
            time.sleep(0.05)
            continue
        panel = Panel(proc, data, log)
        try:
            if panel.request("GET", "/api/health", timeout=5, headers={
                    "X-FaceStitch-Token": panel.token})[0] == 200:
                return panel
        except OSError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the panel did not start in {timeout} s:\n"
                         f"{log.read_text(errors='replace')}")


# --- jobs in every state, moved the way an engine moves them ---------------------


def submit(exchange: Path, prefix: str = "shot", *, media: bytes = b"plate",
           edits: tuple[Edit, ...] = (Edit("age", -4.0),), kind: str = "stitch",
           options: dict[str, Any] | None = None) -> str:
    """A job submitted through the client, with its media attached."""
    job = build_job(source=Source("media/plate.mov"),
                    range=FrameRange(0, 12, Fraction(25), "01:00:00:00"),
                    kind=kind, edits=edits, options=options, id_prefix=prefix,
                    host={"item_name": f"{prefix}.mov"})
    return submit_job(exchange, job, attachments={"media/plate.mov": media})


def claim(exchange: Path, job_id: str, worker: str = "gpu-1:4242:abcd"):
    claim = Exchange(exchange).claim(job_id, worker, lease_seconds=600.0)
    assert claim is not None
    return claim


def write_progress(claim, fraction: float, stage: str = "pti",
                   index: int = 3, count: int = 7) -> None:
    """``progress.msgpack`` replaced atomically, as the runner writes it."""
    doc = Progress(job_id=claim.job_id, state="running", stage=stage,
                   stage_index=index, stage_count=count, fraction=fraction,
                   message=f"{stage}: {fraction:.0%}", worker=claim.worker,
                   updated=utc_now())
    atomic_write_bytes(claim.folder / PROGRESS_FILE, doc.to_bytes())


def finish(exchange: Path, claim, *, error: dict | None = None,
           outputs: dict[str, bytes] | None = None,
           frames: dict[str, bytes] | None = None,
           listed: dict[str, str] | None = None) -> Path:
    """Publish a result the way the runner does (``Exchange.finish``).

    Args:
        outputs: files written under the job folder (relative path -> bytes),
            listed in ``outputs`` by their stem.
        frames: files written and listed in ``frames``, in order.
        listed: more ``outputs`` (key -> path), listed as they are, not written.
    """
    out_map, frame_list = dict(listed or {}), []
    for rel, data in [*(outputs or {}).items(), *(frames or {}).items()]:
        path = claim.folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if rel in (outputs or {}):
            out_map[Path(rel).stem] = rel
        else:
            frame_list.append({"frame": len(frame_list), "path": rel,
                               "sha256": hashlib.sha256(data).hexdigest(),
                               "edited": True})
    now = utc_now()
    result = Result.from_dict({
        "job_id": claim.job_id, "state": "failed" if error else "done",
        "frames": frame_list, "outputs": out_map, "error": error,
        "stages": [{"name": "pti", "seconds": 12.5, "frames": len(frame_list)}],
        "metrics": {"tl_id": 0.98, "warp_error": 0.0012}, "started": now,
        "finished": now})
    return Exchange(exchange).finish(claim, result)


# --- a real browser: Debian's chromium through its chromedriver -----------------

#: Where the browser tests and bench/panel.py leave their screenshots (CI keeps
#: this folder as the tests' artefacts).
ARTEFACTS = Path(os.environ.get("FACESTITCH_TEST_ARTEFACTS",
                                ROOT / "build" / "test-artefacts")) / "panel"


def browser_paths() -> tuple[str, str] | str:
    """``(chromium, chromedriver)`` from the system packages, or why not."""
    import shutil

    chromium = next((p for p in (shutil.which(n) for n in (
        "chromium", "chromium-browser")) if p), None)
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    return ("chromium and chromedriver are not installed: `make browser` installs "
            "Debian's chromium and chromium-driver (as root)")


def start_browser(width: int = 1500, height: int = 1000):
    """A headless chromium driven by Selenium; nothing is downloaded (the binary
    and the driver are the system's)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = browser_paths()
    assert not isinstance(found, str), found
    chromium, driver = found
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-gpu", f"--window-size={width},{height}",
                "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    return webdriver.Chrome(options=opts, service=Service(driver))


def screenshot(driver, name: str) -> Path:
    """Save the page as ``ARTEFACTS/name`` (PNG)."""
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTEFACTS / name
    assert driver.save_screenshot(str(path)), path
    return path


def finish_draft(exchange: Path, claim, sweep: str, tile: int = 96) -> Path:
    """Publish a draft's result as the sweep stage lays it out: one folder of
    frames per row, ``variants`` in sweep order, and the sheet (drawn by the
    engine's own :func:`engine.stages.sweep.sheet`) with its layout."""
    import numpy as np

    from engine.media.video import encode_png
    from engine.stages.sweep import sheet
    from fsexchange.documents import Job, load_document
    from fsexchange.grammar import (parse_sweep, sweep_row_folder, sweep_row_label,
                                    sweep_rows)

    job = load_document(claim.folder / "job.msgpack", Job)
    rows = sweep_rows(parse_sweep(sweep))
    frames, variants, tiles = (0, 11), [], []
    rng = np.random.default_rng(7)
    for r, row in enumerate(rows):
        folder = f"output/sweep/{sweep_row_folder(r, row)}"
        img = np.full((tile, tile, 3), (40 + 60 * r, 90, 200 - 50 * r), np.uint8)
        img[tile // 4:3 * tile // 4, tile // 4:3 * tile // 4] = rng.integers(
            0, 255, (tile // 2, tile // 2, 3), np.uint8)
        data = encode_png(img)
        out = []
        for f in frames:
            rel = f"{folder}/facestitch.{f:07d}.png"
            (claim.folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (claim.folder / rel).write_bytes(data)
            out.append({"frame": f, "path": rel, "edited": True,
                        "sha256": hashlib.sha256(data).hexdigest()})
        label = sweep_row_label(row, job.edits)
        variants.append({"label": label, "folder": folder, "frames": out,
                         "strengths": [{"name": n, "strength": s} for n, s in row]})
        tiles.append((label, [img for _ in frames]))
    src = [np.full((tile, tile, 3), 128, np.uint8) for _ in frames]
    img, layout = sheet(frames, [("source", src)] + tiles, tile)
    for entry, row in zip(layout["rows"][1:], rows):
        entry["strengths"] = [[n, s] for n, s in row]
    out_dir = claim.folder / "output"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "sweep.png").write_bytes(encode_png(img))
    (out_dir / "sweep.json").write_text(json.dumps(layout))
    now = utc_now()
    result = Result.from_dict({
        "job_id": claim.job_id, "state": "done", "frames": variants[len(rows) // 2][
            "frames"], "variants": variants, "error": None,
        "outputs": {"sheet": "output/sweep.png", "sheet_layout": "output/sweep.json"},
        "stages": [{"name": "sweep", "seconds": 3.0, "frames": len(frames)}],
        "metrics": {}, "started": now, "finished": now})
    return Exchange(exchange).finish(claim, result)
