"""``facestitch panel``: serve the job panel for one exchange folder.

``facestitch panel --exchange DIR [--host 127.0.0.1] [--port 8765] [--open]
[--token TOKEN] [--archive DIR]`` prints the panel's URL (with its token in the
fragment) and serves until interrupted. Listening beyond the loopback interface
needs a token: ``--token`` (or ``$FACESTITCH_PANEL_TOKEN``), else one is made up
and printed with the URL. The server needs the ``panel`` extra
(``pip install 'facestitch[panel]'``); without it the command says so in one line.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
import webbrowser
from pathlib import Path

from fsexchange.errors import HostError
from fsexchange.exchange import Exchange
from fsexchange.fsutil import atomic_write_bytes

from host_bridge.panel.security import Guard, new_token

__all__ = ["main", "build_parser", "panel_url", "TOKEN_ENV"]

TOKEN_ENV = "FACESTITCH_PANEL_TOKEN"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="facestitch panel",
        description="Serve the job panel: every job of an exchange in a browser, "
        "with live progress, results, reports, cancel, retry and a draft's "
        "strengths (docs/hosts.md \"The job panel\").")
    p.add_argument("--exchange", required=True, type=Path, metavar="DIR",
                   help="the exchange folder")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; any other needs "
                   "a token)")
    p.add_argument("--port", type=int, default=8765,
                   help="port (default 8765; 0: any free port)")
    p.add_argument("--open", action="store_true", help="open the panel in a browser")
    p.add_argument("--token", default=None,
                   help=f"the token requests must carry (default ${TOKEN_ENV}, else "
                   "a new random one, printed in the URL)")
    p.add_argument("--archive", type=Path, default=None, metavar="DIR",
                   help="where removed jobs go (default DIR/archive; on the same "
                   "disk as the exchange)")
    p.add_argument("--state-file", type=Path, default=None, metavar="FILE",
                   help="write pid, port, URL and token here while serving (the "
                   "Resolve menu's launcher uses it)")
    p.add_argument("--poll", type=float, default=0.5, metavar="SECONDS",
                   help="seconds between looks at the exchange (default 0.5)")
    return p


def panel_url(host: str, port: int, token: str) -> str:
    """The URL to open: the token travels in the fragment (never sent to a
    server, never in a Referer)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else \
        "[::1]" if host == "::" else f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/#token={token}"


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise HostError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; "
                        "give another --port (0: any free port)") from None
    sock.set_inheritable(True)
    return sock


def _write_state(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(state, indent=1).encode())
    os.chmod(path, 0o600)  # it holds the token


def _remove_state(path: Path) -> None:
    """Remove the state file if it still names this process."""
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    ex = Exchange(args.exchange).require()  # io.path when missing or a file
    token = args.token or os.environ.get(TOKEN_ENV, "")
    made_up = not token
    token = token or new_token()
    guard = Guard(token, host=args.host)
    # the server (the `panel` extra) only now: --help works without it, and the
    # CLI turns a missing module into the one-line `pip install` advice
    import uvicorn

    from host_bridge.panel.app import create_app

    sock = _listen(args.host, args.port)
    guard.port = sock.getsockname()[1]
    url = panel_url(args.host, guard.port, token)
    server: uvicorn.Server | None = None
    state_file = args.state_file

    def forget() -> None:
        if state_file:
            _remove_state(state_file)

    app = create_app(ex.root, guard, archive=args.archive, poll=args.poll,
                     stopping=lambda: bool(server and server.should_exit),
                     on_stop=forget)
    config = uvicorn.Config(app, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=2, access_log=False)
    server = uvicorn.Server(config)
    if not guard.loopback and made_up:
        print(f"facestitch panel: listening on {args.host} needs a token; made up "
              "one (give --token to choose it)", file=sys.stderr)
    print(f"FaceStitch panel for {ex.root}: {url}", flush=True)
    if args.state_file:
        _write_state(args.state_file, {
            "pid": os.getpid(), "host": args.host, "port": guard.port, "url": url,
            "token": token, "exchange": str(ex.root), "started": time.time()})
    if args.open:
        threading.Timer(0.5, webbrowser.open, (url,)).start()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        forget()
    return 0
