"""The job panel in a real browser: headless chromium from the system packages,
driven by Selenium through the system's chromedriver (nothing is downloaded).
A real ``facestitch panel`` process serves a real exchange; jobs are submitted
through the client and moved the way an engine moves them (tests/panel_util.py).
The screenshots land in ``build/test-artefacts/panel/`` (docs/hosts.md "The job
panel" shows one). Without chromium the tests skip, saying what to install."""

from __future__ import annotations

import http.server
import signal
import sys
import threading
import time

import pytest

from fsexchange.client import job_status, list_jobs
from fsexchange.documents import Edit, Job, load_document
from fsexchange.exchange import Exchange
from host_bridge.panel import actions
from hostile import make_fifo
from panel_util import (browser_paths, claim, finish, finish_draft, screenshot,
                        start_browser, start_panel, submit, wait_until,
                        write_progress)

_found = browser_paths()
pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX folders"),
    pytest.mark.skipif(isinstance(_found, str), reason=str(_found)),
    pytest.mark.slow,  # a browser and a server process per test: seconds each
]


@pytest.fixture(scope="module")
def browser():
    driver = start_browser()
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def _open(driver, panel, url: str | None = None) -> None:
    driver.get(url or panel.url)
    wait_until(lambda: driver.execute_script(
        "return document.body.dataset.loaded"), 20, "the page to load its list")


def _row(driver, job_id: str):
    return driver.execute_script(
        "return [...document.querySelectorAll('#rows tr')]"
        ".find((tr) => tr.dataset.id === arguments[0]) || null", job_id)


def _row_state(driver, job_id: str) -> str | None:
    tr = _row(driver, job_id)
    return tr.get_attribute("data-state") if tr is not None else None


def _toast(driver) -> str:
    return driver.execute_script(
        "const t = document.getElementById('toast');"
        "return t.hidden ? '' : t.textContent")


def _png(seed: int) -> bytes:
    import numpy as np

    from engine.media.video import encode_png

    img = np.zeros((72, 128, 3), np.uint8)
    img[..., 0] = np.linspace(0, 255, 128, dtype=np.uint8)
    img[..., 1] = 40 * seed
    img[20:52, 48:80, 2] = 255
    return encode_png(img)


def test_the_page_lists_jobs_moves_a_bar_live_and_cancels(browser, tmp_path):
    """Jobs submitted through the client in every state, and hostile entries,
    listed; a running job's bar advances and its end shows without a reload;
    Cancel on the page ends a queued job as cancelled; a finished job's details
    show its frames, served by the panel."""
    ex = Exchange(tmp_path / "ex").ensure().root
    ids = {name: submit(ex, name) for name in
           ("queued", "running", "done", "failed", "cancelled")}
    run = claim(ex, ids["running"])
    write_progress(run, 0.25, stage="invert", index=2, count=8)
    finish(ex, claim(ex, ids["done"]),
           outputs={"output/report.html": b"<h1>report</h1>"},
           frames={f"output/facestitch.{f:07d}.png": _png(f) for f in range(3)})
    finish(ex, claim(ex, ids["failed"]), error={
        "code": "face.not_found", "message": "no face in any frame",
        "stage": "track", "frame": None, "field": None})
    actions.cancel(Exchange(ex), ids["cancelled"])
    # hostile entries: a pipe for a result, a file and a pipe where folders go
    broken = submit(ex, "broken")
    c = claim(ex, broken)
    finish(ex, c)
    (ex / "done" / broken / "result.msgpack").unlink()
    make_fifo(ex / "done" / broken / "result.msgpack")
    make_fifo(ex / "new" / "a-pipe-in-new")
    (ex / "cur" / "a-file-in-cur").write_text("not a job folder")

    panel = start_panel(ex, tmp_path / "panel")
    try:
        _open(browser, panel)
        for name, job_id in ids.items():
            assert _row_state(browser, job_id) == name
        assert _row_state(browser, broken) == "done"
        text = _row(browser, ids["failed"]).text
        assert "face.not_found" in text and "no face in any frame" in text
        assert "invert (3/8)" in _row(browser, ids["running"]).text
        assert "gpu-1:4242:abcd" in _row(browser, ids["running"]).text
        screenshot(browser, "panel-list.png")

        # live: no reload (a marker on window survives), the bar moves
        browser.execute_script("window.__sameDocument = 42")
        bar = "return [...document.querySelectorAll('#rows tr')].find((tr) => " \
              "tr.dataset.id === arguments[0]).querySelector('.bar')" \
              ".getAttribute('aria-valuenow')"
        assert browser.execute_script(bar, ids["running"]) == "25.0"
        write_progress(run, 0.75, stage="pti", index=3, count=8)
        wait_until(lambda: browser.execute_script(bar, ids["running"]) == "75.0",
                   15, "the bar to reach 75 %")
        assert "pti (4/8)" in _row(browser, ids["running"]).text
        finish(ex, run)
        wait_until(lambda: _row_state(browser, ids["running"]) == "done", 15,
                   "the finished job to show as done")
        assert browser.execute_script("return window.__sameDocument") == 42

        # cancel from the page
        _row(browser, ids["queued"]).find_element(
            "css selector", "button[data-action=cancel]").click()
        wait_until(lambda: job_status(ex, ids["queued"]).state == "cancelled", 15,
                   "the job to be cancelled")
        wait_until(lambda: _row_state(browser, ids["queued"]) == "cancelled", 15,
                   "the row to show it cancelled")
        assert "cancel requested for " + ids["queued"] in _toast(browser)
        assert browser.execute_script("return window.__sameDocument") == 42

        # a finished job's details: its frames come from the panel
        _row(browser, ids["done"]).find_element("css selector", "td.id button").click()
        wait_until(lambda: browser.execute_script(
            "const i = document.querySelectorAll('#detail .filmstrip img');"
            "return i.length === 3 && [...i].every((x) => x.complete && "
            "x.naturalWidth === 128)"), 15, "the filmstrip to load")
        links = browser.execute_script(
            "return [...document.querySelectorAll('#detail .links a')]"
            ".map((a) => a.textContent)")
        assert "report.html" in links
        screenshot(browser, "panel-detail.png")
    finally:
        panel.stop()


def test_a_drafts_strength_click_submits_the_full_job(browser, tmp_path):
    ex = Exchange(tmp_path / "ex").ensure().root
    draft = submit(ex, "draft", kind="draft", edits=(Edit("smile", 1.0),),
                   options={"draft": {"sweep": "age=-8:8:3"}})
    finish_draft(ex, claim(ex, draft), "age=-8:8:3")
    panel = start_panel(ex, tmp_path / "panel")
    try:
        _open(browser, panel)
        _row(browser, draft).find_element("css selector", "td.id button").click()
        wait_until(lambda: browser.execute_script(
            "const i = document.querySelector('#detail .sheet img');"
            "return i && i.complete && i.naturalWidth > 0 && "
            "document.querySelectorAll('#detail .row-hit').length === 3"), 15,
            "the sweep sheet")
        # a click on the sheet's "age 8" row chooses it; its button submits
        hit = browser.find_element("css selector", "#detail .row-hit[data-row='2']")
        assert "age 8" in hit.get_attribute("title")
        hit.click()
        button = browser.find_element(
            "css selector", "#detail .strengths button[data-row='2']")
        assert "chosen" in button.get_attribute("class")
        screenshot(browser, "panel-draft.png")
        button.click()
        new_id = wait_until(lambda: [s.id for s in list_jobs(ex)
                                     if s.state == "queued"], 15,
                            "the full job to be submitted")[0]
        job = load_document(ex / "new" / new_id / "job.msgpack", Job)
        old = load_document(ex / "done" / draft / "job.msgpack", Job)
        assert job.kind == "stitch"
        assert job.edits == (Edit("smile", 1.0), Edit("age", 8.0))
        assert "draft" not in job.options
        assert (job.source, job.range) == (old.source, old.range)
        assert job.host["panel"]["from_draft"] == draft
        wait_until(lambda: "submitted as " + new_id in button.text, 10,
                   "the button to name the new job")
        wait_until(lambda: _row_state(browser, new_id) == "queued", 15,
                   "the new job listed")
    finally:
        panel.stop()


class _OtherSite(http.server.BaseHTTPRequestHandler):
    """A page on another origin (another port of 127.0.0.1) that tries the
    panel: read its list, cancel with a guessed and with the real token, and a
    plain form post (which needs no permission from the browser)."""

    page = b""

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.page)))
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, *args):
        pass


_ATTACK = """<!doctype html><body><form id="f" method="post" target="sink"
enctype="text/plain" action="{base}/api/jobs/{job}/cancel">
<input name='{{"a":"' value='"}}'></form><iframe name="sink"></iframe><script>
const out = {{}};
const tryit = async (name, url, init) => {{
  try {{ const r = await fetch(url, init); out[name] = "status " + r.status +
         " type " + r.type + " " + (r.type === "opaque" ? "" : await r.text()); }}
  catch (e) {{ out[name] = "refused: " + e.name; }}
}};
(async () => {{
  await tryit("read", "{base}/api/jobs");
  await tryit("cancel_token", "{base}/api/jobs/{job}/cancel", {{method: "POST",
    headers: {{"Content-Type": "application/json", "X-FaceStitch-Token": "{token}"}},
    body: "{{}}"}});
  await tryit("cancel_nocors", "{base}/api/jobs/{job}/cancel", {{method: "POST",
    mode: "no-cors", credentials: "include", body: "{{}}"}});
  document.getElementById("f").submit();
  setTimeout(() => {{ window.__attack = out; }}, 500);
}})();
</script></body>"""


def test_other_origins_missing_tokens_and_unlisted_paths_are_refused(browser,
                                                                     tmp_path):
    ex = Exchange(tmp_path / "ex").ensure().root
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the panel")
    queued = submit(ex, "queued")
    done = submit(ex, "done")
    finish(ex, claim(ex, done), outputs={"output/report.html": b"<p>report</p>"},
           listed={"escape": "../../../secret.txt", "absolute": str(secret)})
    panel = start_panel(ex, tmp_path / "panel")
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OtherSite)
    _OtherSite.page = _ATTACK.format(base=panel.origin, job=queued,
                                     token=panel.token).encode()
    thread = threading.Thread(target=other.serve_forever, daemon=True)
    thread.start()
    try:
        # another origin: it may neither read the list nor change a job, even
        # knowing the token (the preflight finds no permission; the origin
        # check refuses what needs none)
        browser.get(f"http://127.0.0.1:{other.server_address[1]}/")
        out = wait_until(lambda: browser.execute_script("return window.__attack"),
                         20, "the other site's attempts")
        assert out["read"] == "refused: TypeError", out
        assert out["cancel_token"] == "refused: TypeError", out
        assert out["cancel_nocors"].startswith("status 0 type opaque"), out
        time.sleep(0.5)  # the form post has landed (or not) by now
        assert job_status(ex, queued).state == "queued"
        assert not (ex / "cancel" / queued).exists()

        # the panel's own page without its token: Cancel is refused
        _open(browser, panel, panel.origin + "/")
        browser.execute_script("sessionStorage.clear()")
        _open(browser, panel, panel.origin + "/")
        _row(browser, queued).find_element(
            "css selector", "button[data-action=cancel]").click()
        wait_until(lambda: "request.forbidden" in _toast(browser), 15,
                   "the refusal shown")
        assert "token" in _toast(browser)
        assert job_status(ex, queued).state == "queued"
        screenshot(browser, "panel-no-token.png")

        # paths: only what a result lists, and never outside the job
        got = browser.execute_async_script("""
            const done = arguments[arguments.length - 1];
            Promise.all(arguments[0].map((u) => fetch(u).then(async (r) =>
                [u, r.status, await r.text()]))).then(done);""",
            [f"/api/jobs/{done}/{p}" for p in (
                "outputs/escape", "outputs/absolute", "outputs/..%2F..%2Fsecret.txt",
                "frames/0", "frames/-1", "outputs/nothing")])
        for url, status, body in got:
            assert status == 404 and "not for the panel" not in body, (url, body)
        browser.get(f"{panel.origin}/api/jobs/{done}/outputs/report")
        assert browser.find_element("tag name", "body").text == "report"
        # the report opens sandboxed: no script of its own, no access to the page
        assert browser.execute_script("return window.origin") == "null"
    finally:
        other.shutdown()
        other.server_close()
        panel.stop()


def test_with_a_real_engine_the_bar_advances_and_cancel_ends_the_running_job(
        browser, tmp_path):
    """A real engine process (tests/engine_harness.py: real stages that decode the
    clip with PyAV and report progress per frame) runs a job submitted through
    the client; the page's bar follows its progress without a reload, and
    Cancel on the page stops it: the engine publishes it as cancelled."""
    from engine_harness_util import start_engine, stop, write_test_clip
    from engine_harness_util import submit as submit_harness

    ex = Exchange(tmp_path / "ex").ensure().root
    logdir = tmp_path / "log"
    logdir.mkdir()
    clip = write_test_clip(tmp_path / "clip.mp4", frames=40)
    job_id = submit_harness(ex, clip, "engine-job", frames=40, delay=0.15)
    panel = start_panel(ex, tmp_path / "panel")
    engine = start_engine(ex, logdir, "--poll", "0.1")
    try:
        _open(browser, panel)
        browser.execute_script("window.__sameDocument = 7")
        bar = ("const tr = [...document.querySelectorAll('#rows tr')].find((t) => "
               "t.dataset.id === arguments[0]); return tr && tr.dataset.state === "
               "'running' ? Number(tr.querySelector('.bar')"
               ".getAttribute('aria-valuenow')) : null")
        first = wait_until(lambda: (browser.execute_script(bar, job_id) or 0) > 0,
                           60, "the engine's progress on the page")
        assert first
        start = browser.execute_script(bar, job_id)
        wait_until(lambda: (browser.execute_script(bar, job_id) or 0) > start + 5,
                   30, "the bar to advance")
        screenshot(browser, "panel-engine-running.png")
        _row(browser, job_id).find_element(
            "css selector", "button[data-action=cancel]").click()
        wait_until(lambda: job_status(ex, job_id).state == "cancelled", 60,
                   "the engine to end the job as cancelled")
        wait_until(lambda: _row_state(browser, job_id) == "cancelled", 15,
                   "the row to show it cancelled")
        assert job_status(ex, job_id).error["code"] == "cancelled"
        assert browser.execute_script("return window.__sameDocument") == 7
    finally:
        stop(engine, signal.SIGTERM)
        panel.stop()
