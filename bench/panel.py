"""How the job panel copes with thousands of jobs (docs/hosts.md "The job panel").

Builds an exchange of N jobs (default 2,000) in every state, submitted through
the client and moved the way an engine moves them (claim, progress, result),
starts a real ``facestitch panel`` on 127.0.0.1 and measures:

- the board: a cold full scan, and one poll when nothing changed;
- ``GET /api/jobs?per_page=N``: the full listing as JSON (time and size);
- headless chromium (the system's, through Selenium): the page opened with its
  first 50 rows, and the full listing of N rows rendered and painted (from the
  "per page" change to the second animation frame after the rows are in);
- a progress change reaching the page's bar over server-sent events while the
  N rows are shown.

Each figure is the median of ``--repeat`` runs (min and max printed too). It
leaves a screenshot of the full listing in build/test-artefacts/panel/.

    python bench/panel.py                      # 2,000 jobs, 5 repeats
    python bench/panel.py --jobs 500 --repeat 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from fsexchange.exchange import Exchange  # noqa: E402
from host_bridge.panel import actions  # noqa: E402
from host_bridge.panel.board import JobBoard  # noqa: E402
from panel_util import (browser_paths, claim, finish, screenshot,  # noqa: E402
                        start_browser, start_panel, submit, wait_until,
                        write_progress)

#: The share of each state in the bench's exchange (the rest are done).
MIX = {"queued": 0.08, "running": 0.02, "failed": 0.08, "cancelled": 0.04}


def build_exchange(root: Path, n: int) -> tuple[Path, list[Any]]:
    """``n`` jobs in the :data:`MIX` of states; returns the exchange and the
    claims of the running jobs."""
    ex = Exchange(root).ensure().root
    counts = {k: max(1, round(v * n)) for k, v in MIX.items()}
    counts["done"] = n - sum(counts.values())
    running = []
    for state, count in counts.items():
        for i in range(count):
            job_id = submit(ex, f"{state}{i:05d}")
            if state == "queued":
                continue
            if state == "cancelled":
                actions.cancel(Exchange(ex), job_id)
                continue
            c = claim(ex, job_id, worker=f"gpu-{i % 4}:{1000 + i}:bench")
            if state == "running":
                write_progress(c, (i % 10) / 10)
                running.append(c)
            elif state == "failed":
                finish(ex, c, error={"code": "face.not_found", "message":
                                     "no face in any frame", "stage": "track",
                                     "frame": None, "field": None})
            else:
                finish(ex, c, outputs={"output/report.html": b"<p>report</p>"},
                       frames={"output/facestitch.0000000.png": b"png"})
    return ex, running


def timed(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(runs), "min_s": min(runs),
            "max_s": max(runs)}


_RENDER_ALL = """
const n = arguments[0], done = arguments[arguments.length - 1];
const sel = document.getElementById("per-page");
if (![...sel.options].some((o) => o.value === String(n))) sel.append(new Option(n, n));
sel.value = "25"; sel.dispatchEvent(new Event("change"));
const wait = (pred, then) => { const t = () => pred() ? then() : setTimeout(t, 1);
                               t(); };
wait(() => document.querySelectorAll("#rows tr").length === 25, () => {
  const t0 = performance.now();
  sel.value = String(n); sel.dispatchEvent(new Event("change"));
  wait(() => document.querySelectorAll("#rows tr").length === n, () =>
    requestAnimationFrame(() => requestAnimationFrame(() =>
      done((performance.now() - t0) / 1000))));
});
"""


def bench(n: int, repeat: int, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"jobs": n, "repeat": repeat}
    t0 = time.perf_counter()
    ex, running = build_exchange(work / "ex", n)
    out["build_exchange_s"] = time.perf_counter() - t0

    def cold() -> None:
        JobBoard(ex).refresh(full=True)

    out["board_full_scan"] = timed(cold, repeat)
    board = JobBoard(ex)
    board.refresh(full=True)
    out["board_idle_poll"] = timed(board.refresh, repeat)

    panel = start_panel(ex, work / "panel")
    driver = None
    try:
        per = f"/api/jobs?per_page={n}"
        size = len(panel.request("GET", per)[2])
        out["api_full_listing"] = {**timed(lambda: panel.request("GET", per),
                                           repeat), "bytes": size}
        found = browser_paths()
        if isinstance(found, str):
            out["browser"] = found
            return out
        driver = start_browser()
        driver.set_script_timeout(60)

        def open_page() -> None:
            driver.get(panel.url if driver.current_url.startswith("data:")
                       else panel.origin + "/")
            wait_until(lambda: driver.execute_script(
                "return document.querySelectorAll('#rows tr').length === 50"),
                30, "the first page", poll=0.005)

        open_page()  # the first visit stores the token for the tab
        out["page_open_50_rows"] = timed(open_page, repeat)
        runs = [driver.execute_async_script(_RENDER_ALL, n) for _ in range(repeat)]
        out["render_full_listing"] = {"median_s": statistics.median(runs),
                                      "min_s": min(runs), "max_s": max(runs)}
        shot = screenshot(driver, f"bench-{n}-jobs.png")
        out["screenshot"] = str(shot.relative_to(ROOT))
        bar = ("return [...document.querySelectorAll('#rows tr')].find((tr) => "
               "tr.dataset.id === arguments[0]).querySelector('.bar')"
               ".getAttribute('aria-valuenow')")
        lat = []
        c = running[0]
        for k in range(repeat):
            value = 0.51 + 0.04 * k
            t0 = time.perf_counter()
            write_progress(c, value)
            want = f"{100 * value:.1f}"
            wait_until(lambda w=want: driver.execute_script(bar, c.job_id) == w, 30,
                       "the bar", poll=0.01)
            lat.append(time.perf_counter() - t0)
        out["progress_to_bar"] = {"median_s": statistics.median(lat),
                                  "min_s": min(lat), "max_s": max(lat),
                                  "poll_s": 0.2}
    finally:
        if driver is not None:
            driver.quit()
        panel.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="facestitch-panel-bench-") as tmp:
        out = bench(args.jobs, args.repeat, Path(tmp))
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
