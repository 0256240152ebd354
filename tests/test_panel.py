"""The job panel without a browser: the job list (states, paging, filtering,
changes), the actions (cancel, retry, archive), what a request may do (token,
origin, Host, files only when a result lists them), hostile exchanges, the
missing extra, and the Resolve menu's "FaceStitch Open Panel". Real folders,
real ``facestitch panel`` processes on 127.0.0.1, real HTTP; the browser tests
are in tests/test_panel_browser.py."""

from __future__ import annotations

import json
import os
import runpy
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fsexchange.client import job_status, list_jobs
from fsexchange.documents import Job, load_document
from fsexchange.errors import JobStateError
from fsexchange.exchange import Exchange
from host_bridge.panel import actions
from host_bridge.panel.board import JobBoard
from host_bridge.panel.security import Guard
from hostile import bad_file, call_with_timeout, close_sockets, make_fifo
from panel_util import (ROOT, claim, finish, start_panel, submit, wait_until,
                        write_progress)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX folders")


@pytest.fixture
def ex(tmp_path):
    return Exchange(tmp_path / "ex").ensure().root


def _states(ex: Path) -> dict[str, str]:
    board = JobBoard(ex)
    board.refresh(full=True)
    return {s["id"]: s["state"] for s in board.page("all", 1, 1000)["jobs"]}


def _every_state(ex: Path) -> dict[str, str]:
    ids = {name: submit(ex, name) for name in
           ("queued", "running", "done", "failed", "cancelled")}
    c = claim(ex, ids["running"])
    write_progress(c, 0.42)
    finish(ex, claim(ex, ids["done"]), outputs={"output/report.html": b"<p>r</p>"},
           frames={"output/facestitch.0090000.png": b"png"})
    finish(ex, claim(ex, ids["failed"]), error={
        "code": "face.not_found", "message": "no face in any frame", "stage": "track",
        "frame": None, "field": None})
    actions.cancel(Exchange(ex), ids["cancelled"])
    return ids


def test_the_board_lists_every_job_with_its_state_stage_worker_and_error(ex):
    ids = _every_state(ex)
    board = JobBoard(ex)
    board.refresh(full=True)
    page = board.page("all", 1, 50)
    by_id = {s["id"]: s for s in page["jobs"]}
    assert {i: by_id[i]["state"] for i in ids.values()} == \
        {ids[k]: k for k in ids}
    assert [s["state"] for s in page["jobs"]][:2] == ["running", "queued"]
    run = by_id[ids["running"]]
    assert (run["stage"], run["stage_index"], run["stage_count"]) == ("pti", 3, 7)
    assert run["fraction"] == pytest.approx(0.42)
    assert run["worker"] == "gpu-1:4242:abcd" and run["started"] > 0
    failed = by_id[ids["failed"]]
    assert failed["error"] == {"code": "face.not_found",
                               "message": "no face in any frame"}
    assert by_id[ids["cancelled"]]["error"]["code"] == "cancelled"
    done = by_id[ids["done"]]
    assert done["fraction"] == 1.0 and done["finished"] >= done["started"] > 0
    assert done["label"] == "done.mov" and done["edits"] == "age -4"
    assert page["counts"] == {"all": 5, "active": 2, "queued": 1, "running": 1,
                              "done": 1, "failed": 1, "cancelled": 1}
    # the same as `facestitch status` sees it
    assert {s.id: s.state for s in list_jobs(ex)} == \
        {i: by_id[i]["state"] for i in by_id}


def test_the_list_is_paged_and_filtered(ex):
    ids = [submit(ex, f"shot{i:03d}") for i in range(23)]
    for job_id in ids[:5]:
        finish(ex, claim(ex, job_id))
    board = JobBoard(ex)
    board.refresh(full=True)
    p1 = board.page("all", 1, 10)
    assert (p1["total"], p1["pages"], len(p1["jobs"])) == (23, 3, 10)
    p3 = board.page("all", 3, 10)
    assert len(p3["jobs"]) == 3
    seen = [s["id"] for p in (1, 2, 3) for s in board.page("all", p, 10)["jobs"]]
    assert sorted(seen) == sorted(ids)
    queued = board.page("queued", 1, 100)
    assert queued["total"] == 18 and all(s["state"] == "queued"
                                         for s in queued["jobs"])
    # the queue in claim order: oldest first
    assert [s["id"] for s in queued["jobs"]] == ids[5:]
    assert board.page("done", 1, 100)["total"] == 5
    assert board.page("all", 1, 100, query="shot007")["total"] == 1
    assert board.page("all", 99, 10)["page"] == 3  # clamped


def test_changes_since_a_version_carry_progress_new_and_removed_jobs(ex, tmp_path):
    a, b = submit(ex, "a"), submit(ex, "b")
    board = JobBoard(ex)
    board.refresh(full=True)
    v0 = board.version
    assert board.refresh() is False and board.version == v0  # nothing changed
    c = claim(ex, a)
    write_progress(c, 0.1)
    assert board.refresh()
    ch = board.changes_since(v0)
    assert [s["id"] for s in ch["changed"]] == [a] and ch["removed"] == []
    v1 = ch["version"]
    write_progress(c, 0.6)
    board.refresh()
    [s] = board.changes_since(v1)["changed"]
    assert (s["id"], s["fraction"]) == (a, pytest.approx(0.6))
    finish(ex, c)
    v2 = board.version
    board.refresh()
    actions.archive(Exchange(ex), a, tmp_path / "ex" / "archive")
    new = submit(ex, "c")
    board.refresh()
    ch = board.changes_since(v2)
    assert a in ch["removed"] and new in [s["id"] for s in ch["changed"]]
    assert b not in [s["id"] for s in ch["changed"]]


def test_retry_submits_the_same_document_with_a_new_id_and_its_media(ex):
    job_id = submit(ex, "shot010", media=b"the plate bytes")
    finish(ex, claim(ex, job_id), error={"code": "media.corrupt", "message": "bad",
                                         "stage": "track", "frame": 3, "field": None})
    new_id = actions.retry(Exchange(ex), job_id)
    assert new_id.startswith("shot010-") and new_id != job_id
    old = load_document(ex / "failed" / job_id / "job.msgpack", Job)
    new = load_document(ex / "new" / new_id / "job.msgpack", Job)
    assert (new.source, new.range, new.subject, new.edits, new.options, new.output,
            new.kind, new.priority) == (old.source, old.range, old.subject,
                                        old.edits, old.options, old.output,
                                        old.kind, old.priority)
    assert new.host == {**old.host, "panel": {"retry_of": job_id}}
    assert (ex / "new" / new_id / "media" / "plate.mov").read_bytes() == \
        b"the plate bytes"
    with pytest.raises(JobStateError):
        actions.retry(Exchange(ex), new_id)  # queued: nothing to retry


def test_archive_moves_a_finished_job_and_deletes_nothing(ex, tmp_path):
    done, queued = submit(ex, "done"), submit(ex, "queued")
    finish(ex, claim(ex, done), outputs={"output/report.html": b"<p>report</p>"})
    before = sorted(p.relative_to(ex / "done" / done)
                    for p in (ex / "done" / done).rglob("*"))
    dest = actions.archive(Exchange(ex), done, ex / "archive")
    assert dest == ex / "archive" / done and not (ex / "done" / done).exists()
    assert sorted(p.relative_to(dest) for p in dest.rglob("*")) == before
    assert (dest / "output" / "report.html").read_bytes() == b"<p>report</p>"
    assert done not in {s.id for s in list_jobs(ex)}
    with pytest.raises(JobStateError):
        actions.archive(Exchange(ex), queued, ex / "archive")
    with pytest.raises(JobStateError):  # a finished job cannot be cancelled
        actions.cancel(Exchange(ex), _finished(ex))


def _finished(ex: Path) -> str:
    job_id = submit(ex, "fin")
    finish(ex, claim(ex, job_id))
    return job_id


def test_guard_rules():
    local = Guard("t0k", host="127.0.0.1", port=8765)
    assert local.host_ok("127.0.0.1:8765") and local.host_ok("localhost:8765")
    assert not local.host_ok("evil.example:8765")  # a rebound DNS name
    assert not local.host_ok("127.0.0.1:9999") and not local.host_ok(None)
    assert local.may_read({}, {}, {})  # the loopback interface reads freely
    wide = Guard("t0k", host="0.0.0.0", port=8765)
    assert wide.host_ok("192.0.2.7:8765")
    assert not wide.may_read({}, {}, {}) and not wide.may_read(
        {"x-facestitch-token": "nope"}, {}, {})
    assert wide.may_read({"x-facestitch-token": "t0k"}, {}, {})
    assert wide.may_read({}, {"facestitch_panel": "t0k"}, {})
    assert wide.may_read({}, {}, {"token": "t0k"})
    ok = {"x-facestitch-token": "t0k", "origin": "http://127.0.0.1:8765",
          "host": "127.0.0.1:8765"}
    assert local.write_refusal(ok) is None
    assert "token" in local.write_refusal({**ok, "x-facestitch-token": "bad"})
    assert "origin" in local.write_refusal({k: v for k, v in ok.items()
                                            if k != "origin"})
    assert "origin" in local.write_refusal({**ok, "origin": "http://evil.example"})
    assert "site" in local.write_refusal({**ok, "sec-fetch-site": "cross-site"})


@pytest.fixture
def panel_ex(tmp_path):
    """A panel over an exchange with a finished job whose result lists a report,
    a frame, a file outside the job, a symbolic link out and a named pipe."""
    ex = Exchange(tmp_path / "ex").ensure().root
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the panel")
    job_id = submit(ex, "shot")
    c = claim(ex, job_id)
    (c.folder / "output").mkdir()
    os.symlink(secret, c.folder / "output" / "link_out.png")
    make_fifo(c.folder / "output" / "pipe.png")
    finish(ex, c, outputs={"output/report.html": b"<html>report</html>",
                           "output/preview.mp4": bytes(range(256)) * 40},
           frames={"output/facestitch.0090000.png": b"\x89PNG frame"},
           listed={"escape": "../../../secret.txt", "absolute": str(secret),
                   "link": "output/link_out.png", "pipe": "output/pipe.png",
                   "engine_doc": "job.msgpack"})
    panel = start_panel(ex, tmp_path / "panel")
    yield panel, ex, job_id
    panel.stop()


def test_files_are_served_only_when_the_result_lists_them(panel_ex):
    panel, ex, job_id = panel_ex
    base = f"/api/jobs/{job_id}"
    status, headers, body = panel.request("GET", f"{base}/outputs/report")
    assert status == 200 and body == b"<html>report</html>"
    assert headers["content-type"].startswith("text/html")
    assert headers["content-security-policy"].startswith("sandbox")  # no scripts
    assert headers["x-content-type-options"] == "nosniff"
    assert panel.request("GET", f"{base}/frames/0")[2] == b"\x89PNG frame"
    status, headers, body = panel.request("GET", f"{base}/outputs/preview",
                                          headers={"Range": "bytes=256-511"})
    assert status == 206 and body == bytes(range(256))
    assert headers["content-range"] == f"bytes 256-511/{256 * 40}"
    # job.msgpack is listed but is the job's document: still only what is listed
    assert panel.request("GET", f"{base}/outputs/engine_doc")[0] == 200
    t0 = time.monotonic()
    for path in (f"{base}/outputs/escape", f"{base}/outputs/absolute",
                 f"{base}/outputs/link", f"{base}/outputs/pipe",
                 f"{base}/outputs/nothing", f"{base}/frames/1", f"{base}/frames/-1",
                 f"{base}/frames/x", f"{base}/outputs/..%2F..%2F..%2Fsecret.txt",
                 f"{base}/outputs/%2E%2E", "/api/jobs/..%2Fdone/outputs/report",
                 "/api/jobs/no-such-job/outputs/report",
                 f"{base}/variants/0/frames/0"):
        status, _, body = panel.request("GET", path)
        assert status in (404, 405), (path, status, body)
        assert b"not for the panel" not in body
    assert time.monotonic() - t0 < 10  # the named pipe was never opened
    assert panel.request("GET", "/static/../job.msgpack")[0] == 404
    assert panel.request("GET", "/static/index.html")[0] == 404  # not in the list


def test_state_changes_need_the_token_and_the_same_origin(panel_ex):
    panel, ex, _ = panel_ex
    queued = submit(ex, "queued")
    path = f"/api/jobs/{queued}/cancel"
    good = {"Content-Type": "application/json", "X-FaceStitch-Token": panel.token,
            "Origin": panel.origin}
    refused = [
        {k: v for k, v in good.items() if k != "X-FaceStitch-Token"},
        {**good, "X-FaceStitch-Token": "guessed"},
        {k: v for k, v in good.items() if k != "Origin"},
        {**good, "Origin": "http://evil.example"},
        {**good, "Origin": f"http://localhost:{panel.port}"},  # another origin
        {**good, "Sec-Fetch-Site": "cross-site"},
        {**good, "Cookie": f"facestitch_panel={panel.token}",
         "X-FaceStitch-Token": ""},  # a cookie never authorises a change
    ]
    for headers in refused:
        status, _, body = panel.request("POST", path, body={}, headers=headers)
        assert status == 403, (headers, status, body)
    status, _, _ = panel.request("POST", path, body=b"{}", headers={
        **good, "Content-Type": "text/plain"})
    assert status == 415  # a plain form post from elsewhere
    status, _, _ = panel.request("GET", "/api/jobs",
                                 headers={"Host": f"evil.example:{panel.port}"})
    assert status == 421  # DNS rebinding
    assert job_status(ex, queued).state == "queued"  # nothing happened
    status, out = panel.post(path)
    assert status == 200 and out["state"] == "cancelled"
    assert job_status(ex, queued).state == "cancelled"
    status, out = panel.post(path)
    assert status == 409 and out["error"]["code"] == "job.state"


def test_the_panel_keeps_working_with_hostile_entries(tmp_path):
    """The hardening cases (tests/hostile.py): pipes, sockets, links and broken
    documents where job files and folders belong. The list loads at once, lists
    every job (the bad ones with their reading error) and keeps taking changes."""
    ex = Exchange(tmp_path / "ex").ensure().root
    outside = tmp_path / "outside.txt"
    outside.write_text("outside")
    good = submit(ex, "good")
    hostile = {}
    for kind in ("fifo", "socket", "folder", "symlink_out", "dangling", "truncated",
                 "nested", "oversized"):
        job_id = submit(ex, f"h-{kind}")
        c = claim(ex, job_id)
        finish(ex, c)
        target = ex / "done" / job_id / "result.msgpack"
        target.unlink()
        bad_file(target, kind, good=b"\x81\xa6schema", outside=outside,
                 limit=32 << 20)
        hostile[job_id] = kind
    jid = submit(ex, "h-jobdoc")
    (ex / "new" / jid / "job.msgpack").unlink()
    make_fifo(ex / "new" / jid / "job.msgpack")
    make_fifo(ex / "new" / "a-pipe-in-new")
    (ex / "cur" / "a-file-in-cur").write_text("not a job folder")
    os.symlink(tmp_path, ex / "done" / "link-to-elsewhere")
    run = submit(ex, "h-progress")
    c = claim(ex, run)
    make_fifo(c.folder / "progress.msgpack")
    try:
        board = JobBoard(ex)
        call_with_timeout(lambda: board.refresh(full=True), 20)
        page = board.page("all", 1, 100)
        by_id = {s["id"]: s for s in page["jobs"]}
        assert good in by_id and by_id[good]["state"] == "queued"
        for job_id in hostile:
            assert by_id[job_id]["state"] == "done"
            assert by_id[job_id]["error"] is not None  # never a plain "done"
        assert by_id[jid]["readable"] is False
        assert by_id[run]["state"] == "running"
        panel = start_panel(ex, tmp_path / "panel")
        try:
            listed = panel.get_json("/api/jobs?per_page=100")
            assert {s["id"] for s in listed["jobs"]} >= {good, jid, run, *hostile}
            for job_id in [*hostile, jid, run, "link-to-elsewhere"]:
                status, _, _ = panel.request("GET", f"/api/jobs/{job_id}")
                assert status in (200, 404)
                assert panel.request("GET", f"/api/jobs/{job_id}/outputs/x")[0] \
                    in (404,)
            later = submit(ex, "later")
            wait_until(lambda: later in {s["id"] for s in panel.get_json(
                "/api/jobs?per_page=100")["jobs"]}, 20, "a new job listed")
            status, out = panel.post(f"/api/jobs/{later}/cancel")
            assert status == 200 and out["state"] == "cancelled"
        finally:
            panel.stop()
        assert stat.S_ISFIFO(os.lstat(ex / "new" / jid / "job.msgpack").st_mode)
    finally:
        close_sockets()


BLOCK_PANEL = textwrap.dedent("""
    import importlib.abc, sys
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("starlette", "uvicorn"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None
    sys.meta_path.insert(0, Blocker())
    from host_bridge.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_without_the_extra_the_command_says_how_to_install_it(tmp_path):
    ex = Exchange(tmp_path / "ex").ensure().root
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", BLOCK_PANEL, "panel", "--exchange",
                        str(ex)], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = [ln for ln in p.stderr.splitlines() if not ln.startswith("INFO")]
    assert lines == [lines[0]] and "pip install 'facestitch[panel]'" in lines[0]
    assert "Traceback" not in p.stderr
    help_ = subprocess.run([sys.executable, "-c", BLOCK_PANEL, "panel", "--help"],
                           capture_output=True, text=True, env=env, timeout=60)
    assert help_.returncode == 0 and "--token" in help_.stdout


def test_binding_beyond_loopback_needs_a_token_and_a_taken_port_is_one_line(tmp_path):
    ex = Exchange(tmp_path / "ex").ensure().root
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        p = subprocess.run([sys.executable, "-m", "host_bridge.cli", "panel",
                            "--exchange", str(ex), "--port", str(port)],
                           capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 2 and "[host.error]" in p.stderr and str(port) in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    from host_bridge.panel.command import panel_url

    assert panel_url("0.0.0.0", 8765, "abc") == "http://127.0.0.1:8765/#token=abc"
    # on every interface without --token: one is made up, printed in the URL, and
    # every request, reads included, needs it
    panel = start_panel(ex, tmp_path / "panel", "--host", "0.0.0.0")
    try:
        out = panel.log.read_text()
        assert "needs a token; made up one" in out
        assert f":{panel.port}/#token={panel.token}" in out and len(panel.token) > 30
        assert panel.request("GET", "/api/jobs")[0] == 401
        assert panel.request("GET", "/api/jobs?token=guess")[0] == 401
        assert panel.request("GET", f"/api/jobs?token={panel.token}")[0] == 200
        assert panel.request("GET", "/api/jobs", headers={
            "X-FaceStitch-Token": panel.token})[0] == 200
        status, headers, _ = panel.request("GET", "/api/session", headers={
            "X-FaceStitch-Token": panel.token})
        assert status == 200 and "httponly" in headers["set-cookie"].lower()
        assert panel.request("GET", "/api/jobs", headers={
            "Cookie": f"facestitch_panel={panel.token}"})[0] == 200
    finally:
        panel.stop()


def test_draft_strength_picking_rules(ex):
    """``pick`` submits the draft's shot as a stitch job at one row's strengths,
    checked against the draft's result; anything else is refused."""
    from fsexchange.documents import Edit
    from fsexchange.errors import EditInvalid
    from panel_util import finish_draft

    draft = submit(ex, "draft", kind="draft", edits=(Edit("smile", 1.0),),
                   options={"draft": {"sweep": "age=-8:8:3"}, "pti": {"steps": 7}})
    with pytest.raises(JobStateError):  # not finished yet
        actions.pick_strength(Exchange(ex), draft, 0)
    finish_draft(ex, claim(ex, draft), "age=-8:8:3")
    new_id = actions.pick_strength(Exchange(ex), draft, 0)
    job = load_document(ex / "new" / new_id / "job.msgpack", Job)
    assert (job.kind, job.edits) == ("stitch", (Edit("smile", 1.0), Edit("age", -8.0)))
    # less the draft section; the refinement recorded as every stitch job does
    assert job.options == {"pti": {"steps": 7}, "refine": {"enabled": True}}
    assert job.host["panel"] == {"from_draft": draft, "row": 0,
                                 "strengths": job.host["panel"]["strengths"]}
    assert (ex / "new" / new_id / "media" / "plate.mov").read_bytes() == b"plate"
    for row in (3, -1):
        with pytest.raises(EditInvalid):
            actions.pick_strength(Exchange(ex), draft, row)
    with pytest.raises(JobStateError):  # a stitch job is no draft
        actions.pick_strength(Exchange(ex), _finished(ex), 0)
    # a result whose rows do not match the draft's sweep is not trusted
    other = submit(ex, "other", kind="draft", edits=(),
                   options={"draft": {"sweep": "age=-4:4:3"}})
    finish_draft(ex, claim(ex, other), "age=-8:8:3")
    with pytest.raises(EditInvalid):
        actions.pick_strength(Exchange(ex), other, 2)


def _next_event(resp) -> dict:
    """The next ``jobs`` event of a server-sent event stream."""
    event, data = None, []
    while True:
        line = resp.fp.readline().decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and event == "jobs":
            return json.loads("".join(data))
        elif line == "":
            event, data = None, []


def test_events_push_changes_and_the_actions_work_over_http(tmp_path):
    """The server-sent events carry a running job's progress and a new job; retry,
    remove and pick answer over HTTP as the page calls them."""
    import http.client

    from fsexchange.documents import Edit
    from panel_util import finish_draft

    ex = Exchange(tmp_path / "ex").ensure().root
    run = submit(ex, "run")
    c = claim(ex, run)
    write_progress(c, 0.1)
    failed = submit(ex, "failed")
    finish(ex, claim(ex, failed), error={"code": "internal", "message": "boom",
                                         "stage": "pti", "frame": None,
                                         "field": None})
    draft = submit(ex, "draft", kind="draft", edits=(),
                   options={"draft": {"sweep": "age=-8:8:3"}})
    finish_draft(ex, claim(ex, draft), "age=-8:8:3")
    queued = submit(ex, "queued")
    before = _tree(ex)
    panel = start_panel(ex, tmp_path / "panel")
    conn = http.client.HTTPConnection("127.0.0.1", panel.port, timeout=20)
    try:
        version = panel.get_json("/api/jobs")["version"]
        conn.request("GET", f"/api/events?since={version}")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("content-type").startswith("text/event-stream")
        write_progress(c, 0.6)
        ev = _next_event(resp)
        [s] = ev["changed"]
        assert s["id"] == run and s["fraction"] == pytest.approx(0.6)
        late = submit(ex, "late")
        ev = _next_event(resp)
        assert late in [s["id"] for s in ev["changed"]]

        status, out = panel.post(f"/api/jobs/{failed}/retry")
        assert status == 200 and job_status(ex, out["new_job"]).state == "queued"
        status, out = panel.post(f"/api/jobs/{draft}/pick", {"row": 2})
        assert status == 200
        picked = load_document(ex / "new" / out["new_job"] / "job.msgpack", Job)
        assert picked.edits == (Edit("age", 8.0),)
        assert panel.post(f"/api/jobs/{draft}/pick", {"row": "2"})[0] == 400
        assert panel.post(f"/api/jobs/{draft}/pick", {"row": 9})[0] == 422
        status, out = panel.post(f"/api/jobs/{failed}/archive")
        assert status == 200 and Path(out["archived"]) == ex / "archive" / failed
        assert (ex / "archive" / failed / "result.msgpack").is_file()
        assert panel.post(f"/api/jobs/{run}/archive")[1]["error"]["code"] == \
            "job.state"
        assert panel.post(f"/api/jobs/{run}/explode")[0] == 404
        ev = _next_event(resp)
        while failed not in ev["removed"]:
            ev = _next_event(resp)
        assert panel.post(f"/api/jobs/{queued}/cancel")[0] == 200
    finally:
        conn.close()
        panel.stop()
    # the panel wrote only into cancel/, new/ (through the client's submit,
    # assembling in tmp/, left empty) and its archive; the rest is as it was,
    # less the archived job (and the running job's progress this test wrote)
    after = _tree(ex)
    moved = {p: v for p, v in before.items() if p.startswith(f"failed/{failed}")}
    mine = ("cancel", "new", "archive", f"cur/{run}/progress.msgpack")  # + cancelled
    assert {p: v for p, v in after.items() if not p.startswith(mine)} == \
        {p: v for p, v in before.items() if not p.startswith(mine) and p not in moved
         and not p.startswith(f"new/{queued}")}
    assert sorted(p for p in after if p.startswith("archive/")) == sorted(
        "archive/" + p.split("/", 1)[1] for p in moved)
    # the cancelled queued job, published by the client's cancel (its claim and
    # result beside what was queued)
    assert {p for p in after if p.startswith("cancelled/")} >= {
        "cancelled/" + p.split("/", 1)[1] for p in before
        if p.startswith(f"new/{queued}")} | {f"cancelled/{queued}/result.msgpack"}


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root``: relative path -> (size, mtime ns)
    for files, (-1, 0) for folders."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = os.lstat(path)
        rel = path.relative_to(root).as_posix()
        out[rel] = (-1, 0) if stat.S_ISDIR(st.st_mode) else (st.st_size,
                                                               st.st_mtime_ns)
    return out


SHIM = ROOT / "resolve_scripts" / "FaceStitch Open Panel.py"


class _Shown:
    def __init__(self):
        self.shown = []

    def show(self, title, text, *, error=False):
        self.shown.append((error, text))


def test_open_panel_starts_one_detached_panel_and_opens_the_browser(tmp_path,
                                                                    monkeypatch,
                                                                    capsys):
    """The Resolve menu's "FaceStitch Open Panel": the real shim file, as Resolve
    runs it (no Resolve session needed); the browser is $BROWSER, a script that
    writes down the URL it is given."""
    ex = Exchange(tmp_path / "ex").ensure().root
    job_id = submit(ex, "shot")
    cfg = tmp_path / "cfg" / "bridge.json"
    cfg.parent.mkdir()
    cfg.write_text(json.dumps({"exchange": str(ex), "ui": "console",
                               "python_path": [str(ROOT)],
                               "panel_python": sys.executable}))
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"
    browser.write_text(f"#!/bin/sh\necho \"$1\" >> {opened}\n")
    browser.chmod(0o755)
    monkeypatch.setenv("FACESTITCH_BRIDGE_CONFIG", str(cfg))
    monkeypatch.setenv("BROWSER", str(browser))
    monkeypatch.delenv("FACESTITCH_EXCHANGE", raising=False)
    import webbrowser

    monkeypatch.setattr(webbrowser, "_tryorder", None)  # read $BROWSER again
    monkeypatch.setattr(webbrowser, "_browsers", {})
    from host_bridge import menu

    pids, texts = [], []
    try:
        for _ in range(2):
            ui = _Shown()
            assert menu.run("panel", {}, prompter=ui) == 0, ui.shown
            [(error, text)] = ui.shown
            assert not error
            texts.append(text)
            state = json.loads(next(cfg.parent.glob("panel-*.json")).read_text())
            pids.append(state["pid"])
            assert state["url"] in text
        assert "(started," in texts[0] and "(already running," in texts[1]
        assert pids[0] == pids[1]  # the second call found the running one
        state_path = next(cfg.parent.glob("panel-*.json"))
        assert stat.S_IMODE(state_path.stat().st_mode) == 0o600  # it holds the token
        urls = wait_until(lambda: opened.exists() and opened.read_text().split(),
                          10, "the browser to be called")
        assert urls[0] == state["url"] and state["url"].startswith(
            "http://127.0.0.1:") and "#token=" in state["url"]
        # the panel serves this exchange, detached from this process group
        assert os.getpgid(state["pid"]) != os.getpgid(0)
        from panel_util import Panel

        panel = Panel(None, state, Path("/dev/null"))  # type: ignore[arg-type]
        assert job_id in {s["id"] for s in panel.get_json("/api/jobs")["jobs"]}
        # the real shim file, as Resolve runs it, finds the same panel
        out = subprocess.run(
            [sys.executable, "-c", "import runpy,sys; runpy.run_path(sys.argv[1], "
             "run_name='__main__')", str(SHIM)],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONPATH": ""})
        assert "already running" in out.stdout and str(pids[0]) in out.stdout, out
        # and with the globals Resolve injects (the free edition, no project
        # open: the panel needs no Resolve session)
        from fake_resolve import FakeResolve

        resolve = FakeResolve(studio=False, version=(19, 1, 3))
        capsys.readouterr()
        runpy.run_path(str(SHIM), init_globals={
            "resolve": resolve, "fusion": resolve.fusion, "bmd": object()},
            run_name="__main__")
        shown = capsys.readouterr().out
        assert "already running" in shown and state["url"] in shown, shown
    finally:
        for pid in set(pids):
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                pass
    wait_until(lambda: not list(cfg.parent.glob("panel-*.json")), 20,
               "the panel to stop and remove its state file")


def test_open_panel_says_why_the_panel_could_not_start(tmp_path, monkeypatch):
    """A ``panel_python`` that does not exist, and one without the ``panel``
    extra: the editor reads why, in one message, and nothing keeps running."""
    from host_bridge import menu
    from host_bridge.config import BridgeConfig

    ex = Exchange(tmp_path / "ex").ensure().root
    monkeypatch.setenv("FACESTITCH_BRIDGE_CONFIG", str(tmp_path / "cfg" / "b.json"))
    monkeypatch.delenv("FACESTITCH_PANEL_PYTHON", raising=False)
    ui = _Shown()
    cfg = BridgeConfig(exchange=ex, panel_python=str(tmp_path / "no-python"))
    assert menu.run("panel", {}, prompter=ui, config=cfg) == 2
    [(error, text)] = ui.shown
    assert error and "cannot start the panel" in text and "panel_python" in text
    # a Python that lacks the extra (the import blocker of the test above)
    (tmp_path / "blocked.py").write_text(BLOCK_PANEL)
    blocked = tmp_path / "python-without-panel"  # called as PY -m host_bridge.cli
    blocked.write_text(f"#!/bin/sh\nshift 2\nexec {sys.executable} "
                       f"{tmp_path / 'blocked.py'} \"$@\"\n")
    blocked.chmod(0o755)
    ui = _Shown()
    cfg = BridgeConfig(exchange=ex, panel_python=str(blocked))
    assert menu.run("panel", {}, prompter=ui, config=cfg) == 2
    [(error, text)] = ui.shown
    assert error and "the panel did not start" in text, text
    assert "pip install 'facestitch[panel]'" in text
    assert not list((tmp_path / "cfg").glob("panel-*.json"))
