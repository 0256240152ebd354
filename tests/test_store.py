"""Model store: install with hash checks, resumable fetch from a local HTTP server,
licences, verify, user models, the CLI. Never contacts the internet."""

from __future__ import annotations

import hashlib
import http.server
import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from engine.models.store import (
    MANIFEST,
    ModelFile,
    Store,
    manifest_entry,
    resolve_profile,
    store_home,
)
from fsexchange.errors import ModelError, ModelHashMismatch


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """The local test server must be reached directly, never through a proxy."""
    for k in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
              "ALL_PROXY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.delenv("FACESTITCH_MODEL_BASE_URL", raising=False)


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


class _Server:
    """127.0.0.1 file server with HTTP Range support and scripted failures."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.cut_once: set[str] = set()  # close the connection half-way, once
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                rng = self.headers.get("Range")
                outer.requests.append((name, rng))
                data = outer.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                body = data[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if name in outer.cut_once:
                    outer.cut_once.discard(name)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


PAYLOAD = bytes(range(256)) * 1000  # 256 kB


def _manifest(verified: bool = True) -> tuple[ModelFile, ...]:
    return (
        ModelFile("net.pkl", "generator", "models/net.pkl", size=len(PAYLOAD),
                  sha256=_sha(PAYLOAD), sha256_verified=verified,
                  url="https://example.invalid/net.pkl", licence="nvidia-nc"),
        ModelFile("free.bin", "lpips_backbone", "models/free.bin",
                  url="https://example.invalid/free.bin", licence="bsd-3-torchvision"),
    )


def test_fetch_normal_download_with_licence_acceptance(tmp_path):
    store = Store(tmp_path / "home", _manifest())
    with _Server({"net.pkl": PAYLOAD}) as srv:
        with pytest.raises(ModelError, match="--accept-licence"):
            store.fetch(["net.pkl"], base_url=srv.url)
        assert not store.installed("net.pkl")
        reps = store.fetch(["net.pkl"], base_url=srv.url, accept_licence=True)
    assert reps[0].status == "installed" and reps[0].hash_check == "verified"
    assert store.installed("net.pkl").read_bytes() == PAYLOAD
    recs = json.loads((tmp_path / "home" / "store.json").read_text())
    assert recs["format"] == "facestitch.ModelStore/1"
    assert recs["files"]["net.pkl"]["sha256"] == _sha(PAYLOAD)
    assert "net.pkl" in recs["licences"]["nvidia-nc"]["files"]
    assert recs["licences"]["nvidia-nc"]["accepted_at"]
    assert not list((tmp_path / "home" / "downloads").glob("*.part"))


def test_fetch_interrupted_then_resumed(tmp_path):
    store = Store(tmp_path / "home", _manifest())
    store.accept_licence("nvidia-nc")
    with _Server({"net.pkl": PAYLOAD}) as srv:
        srv.cut_once.add("net.pkl")
        with pytest.raises(ModelError, match="resume"):
            store.fetch(["net.pkl"], base_url=srv.url, attempts=1)
        part = tmp_path / "home" / "downloads" / "net.pkl.part"
        kept = part.stat().st_size
        assert 0 < kept < len(PAYLOAD)
        assert not store.installed("net.pkl")
        store.fetch(["net.pkl"], base_url=srv.url, attempts=1)  # a later run resumes
        assert srv.requests[-1] == ("net.pkl", f"bytes={kept}-")
        # and within one call, retries resume too
        store2 = Store(tmp_path / "home2", _manifest())
        store2.accept_licence("nvidia-nc")
        srv.cut_once.add("net.pkl")
        n = len(srv.requests)
        store2.fetch(["net.pkl"], base_url=srv.url, attempts=3)
        assert srv.requests[n][1] is None
        assert srv.requests[n + 1][1].startswith("bytes=")
    assert store.installed("net.pkl").read_bytes() == PAYLOAD
    assert store2.installed("net.pkl").read_bytes() == PAYLOAD
    assert not part.exists()


def test_fetch_corrupted_file_is_rejected_and_nothing_installed(tmp_path):
    store = Store(tmp_path / "home", _manifest())
    bad = bytearray(PAYLOAD)
    bad[1000] ^= 1
    with _Server({"net.pkl": bytes(bad)}) as srv:
        with pytest.raises(ModelHashMismatch):
            store.fetch(["net.pkl"], base_url=srv.url, accept_licence=True)
    assert not store.installed("net.pkl")
    assert "net.pkl" not in store.records()["files"]
    assert not list((tmp_path / "home" / "downloads").glob("*"))


def test_base_url_environment_override(tmp_path, monkeypatch):
    store = Store(tmp_path / "home", _manifest())
    with _Server({"free.bin": b"abc"}) as srv:
        monkeypatch.setenv("FACESTITCH_MODEL_BASE_URL", srv.url + "/")
        reps = store.fetch(["free.bin"])  # BSD: no acceptance needed
    assert reps[0].hash_check == "recorded"
    assert store.file_record("free.bin")["sha256"] == _sha(b"abc")


def test_install_from_folder_records_unverified_hashes_and_verify(tmp_path):
    src = tmp_path / "pretrained_models" / "nested"
    src.mkdir(parents=True)
    (src / "net.pkl").write_bytes(PAYLOAD)
    (src / "free.bin").write_bytes(b"xyz")
    (src / "unrelated.txt").write_text("ignored")
    store = Store(tmp_path / "home", _manifest(verified=False))
    with pytest.raises(ModelError, match="NVIDIA"):
        store.install_from(tmp_path / "pretrained_models")
    reps = store.install_from(tmp_path / "pretrained_models", accept_licence=True)
    assert sorted(r.name for r in reps) == ["free.bin", "net.pkl"]
    assert {r.name: r.hash_check for r in reps} == {"net.pkl": "matches-unverified",
                                                    "free.bin": "recorded"}
    res = {r["name"]: r["status"] for r in store.verify()}
    assert res == {"net.pkl": "ok", "free.bin": "ok"}
    store.installed("free.bin").write_bytes(b"changed")
    res = {r["name"]: r["status"] for r in store.verify()}
    assert res["free.bin"] == "changed"
    # a wrong copy of a file with a verified hash is refused
    store2 = Store(tmp_path / "home2", _manifest(verified=True))
    (src / "net.pkl").write_bytes(PAYLOAD[:-1] + b"\x00")
    with pytest.raises(ModelHashMismatch):
        store2.install_from(tmp_path / "pretrained_models", accept_licence=True)
    assert not store2.installed("net.pkl")


def test_unverified_manifest_hash_mismatch_is_recorded_not_refused(tmp_path):
    m = (ModelFile("e4e.pt", "encoder", "models/e4e.pt", sha256="0" * 64,
                   licence="bsd-3-torchvision"),)
    (tmp_path / "e4e.pt").write_bytes(b"data")
    store = Store(tmp_path / "home", m)
    rep = store.install_file(m[0], tmp_path / "e4e.pt")
    assert rep.hash_check == "recorded" and store.installed("e4e.pt")
    assert store.file_record("e4e.pt")["sha256"] == _sha(b"data")


def test_torch_hub_name_prefix_is_checked(tmp_path):
    m = manifest_entry("alexnet-owt-7be5be79.pth")
    (tmp_path / m.name).write_bytes(b"not alexnet")
    store = Store(tmp_path / "home")
    with pytest.raises(ModelHashMismatch, match="7be5be79"):
        store.install_file(m, tmp_path / m.name)


def test_official_manifest_facts():
    names = {m.name for m in MANIFEST}
    assert {"ffhq.pkl", "e4e_ffhq_encode.pt", "79999_iter.pth",
            "alexnet-owt-7be5be79.pth", "stylegan2-ffhq-config-f.pt"} <= names
    assert sum(1 for m in MANIFEST if m.role == "w_direction") == 16
    ffhq = manifest_entry("ffhq.pkl")
    assert ffhq.url.startswith("https://nvlabs-fi-cdn.nvidia.com/")
    assert ffhq.licence == "nvidia-nc" and not ffhq.sha256_verified
    e4e = manifest_entry("e4e_ffhq_encode.pt")
    assert e4e.sha256.startswith("2ace1d9a") and not e4e.sha256_verified
    age = manifest_entry("age.npy")
    assert age.licence == "cc-by-nc-4.0" and "w_directions/age.npy" in age.url
    assert manifest_entry("shape_predictor_68_face_landmarks.dat").sha256_verified


def test_store_home_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("FACESTITCH_HOME", str(tmp_path / "x"))
    assert store_home() == tmp_path / "x"
    monkeypatch.delenv("FACESTITCH_HOME")
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert store_home() == Path.home() / ".local" / "share" / "facestitch"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert store_home() == Path.home() / "Library" / "Application Support" / \
        "FaceStitch"


def test_resolve_profile(tmp_path):
    store = Store(tmp_path)
    assert resolve_profile("auto", store) == "tiny"
    assert resolve_profile("official", store) == "official"
    with pytest.raises(ModelError):
        resolve_profile("huge", store)


def test_cli_list_fetch_verify(tmp_path, capsys):
    from host_bridge.cli import main

    assert main(["models", "list", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["official_complete"] is False
    assert any(r["name"] == "ffhq.pkl" and r["state"] == "missing"
               for r in doc["files"])
    with _Server({"79999_iter.pth": b"parser-bytes"}) as srv:
        assert main(["models", "fetch", "79999_iter.pth", "--base-url", srv.url]) == 2
        assert "accept" in capsys.readouterr().err
        assert main(["models", "fetch", "79999_iter.pth", "--base-url", srv.url,
                     "--accept-licence", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep[0]["name"] == "79999_iter.pth" and rep[0]["hash_check"] == "recorded"
    assert main(["models", "verify"]) == 0
    assert "79999_iter.pth: ok" in capsys.readouterr().out
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "79999_iter.pth" in out and "installed" in out


def test_cli_install_directions_then_edits(tmp_path, capsys):
    from host_bridge.cli import main

    d = tmp_path / "STIT" / "editings" / "w_directions"
    d.mkdir(parents=True)
    v = np.random.default_rng(0).standard_normal(512)
    np.save(d / "age.npy", np.repeat(v[None], 18, axis=0))
    np.save(d / "smile.npy", np.repeat(v[None], 18, axis=0))
    assert main(["models", "install", "--from", str(tmp_path / "STIT"),
                 "--accept-licence"]) == 0
    capsys.readouterr()
    assert main(["edits", "--profile", "official", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    edits = {e["name"]: e for e in doc["edits"]}
    assert set(edits) == {"age", "smile"}
    assert edits["age"]["recommended"] == [-8.0, 8.0]
    assert "stylegan2-distillation" in edits["age"]["source"]
    assert edits["age"]["licence"].startswith("CC BY-NC 4.0")
    assert edits["age"]["test_data"] is False
    assert main(["edits"]) == 0  # auto -> tiny (official networks missing)
    out = capsys.readouterr().out
    assert "TEST" in out and "smile" in out and "lipstick" in out
