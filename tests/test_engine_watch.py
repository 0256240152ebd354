"""FolderWatch: woken by jobs renamed into new/ and by cancel requests; falls back
to polling without watchdog; leaves no threads behind."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from engine.service.watch import FolderWatch
from engine_harness_util import no_leaked_threads  # noqa: F401 (fixture)
from fsexchange.exchange import Exchange


pytestmark = pytest.mark.usefixtures("no_leaked_threads")


def test_wakes_on_a_job_renamed_in_and_on_a_cancel_request(tmp_path):
    ex = Exchange(tmp_path / "ex").ensure()
    wake = threading.Event()
    with FolderWatch([ex.dir("new"), ex.dir("cancel")], wake) as watch:
        assert watch._observer is not None
        staging = ex.staging_folder()
        (staging / "job.msgpack").write_bytes(b"x")
        assert not wake.wait(0.3)  # writing in tmp/ is not watched
        os.rename(staging, ex.dir("new") / "j1")
        assert wake.wait(10)
        wake.clear()
        ex.request_cancel("j1")
        assert wake.wait(10)


def test_without_watchdog_it_reports_polling(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "watchdog.observers", None)
    watch = FolderWatch([tmp_path], threading.Event())
    assert watch.start() is False
    watch.stop()


def test_an_unwatchable_folder_falls_back_to_polling(tmp_path):
    watch = FolderWatch([tmp_path / "missing"], threading.Event())
    assert watch.start() is False
    watch.stop()
