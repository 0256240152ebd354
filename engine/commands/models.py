"""``facestitch models``: list, verify, install, fetch and add model files.

::

    facestitch models list [--json]
    facestitch models verify [--json]
    facestitch models install --from DIR [--accept-licence]
    facestitch models fetch [NAME ...] [--accept-licence] [--base-url URL]
    facestitch models add NAME PATH [--no-copy]      (a checkpoint)
    facestitch models add NAME DIR.npy [--space w|s] [--profile official|tiny]

The store lives under ``$FACESTITCH_HOME`` (default: the per-user data folder).
``fetch`` resumes interrupted downloads; ``$FACESTITCH_MODEL_BASE_URL`` or
``--base-url`` fetches every file from ``BASE/<name>`` instead of its public URL.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facestitch models",
                                description="Manage the FaceStitch model store.")
    sub = p.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", help="official files, user models and their state")
    ls.add_argument("--json", action="store_true")
    vf = sub.add_parser("verify", help="re-hash installed files")
    vf.add_argument("--json", action="store_true")
    ins = sub.add_parser("install", help="copy official files from a folder")
    ins.add_argument("--from", dest="src", required=True, metavar="DIR")
    ins.add_argument("--accept-licence", "--accept-license", action="store_true",
                     dest="accept")
    ins.add_argument("--json", action="store_true")
    ft = sub.add_parser("fetch", help="download official files (resumable)")
    ft.add_argument("names", nargs="*", metavar="NAME")
    ft.add_argument("--accept-licence", "--accept-license", action="store_true",
                    dest="accept")
    ft.add_argument("--base-url", default=None,
                    help="fetch BASE_URL/<name> instead of each file's public URL")
    ft.add_argument("--json", action="store_true")
    ad = sub.add_parser("add", help="register your own checkpoint (inspected safely)")
    ad.add_argument("name")
    ad.add_argument("path")
    ad.add_argument("--no-copy", action="store_true",
                    help="register the file where it is instead of copying it")
    ad.add_argument("--profile", default="official", choices=("official", "tiny"),
                    help="directions (.npy): the profile they belong to")
    ad.add_argument("--space", default=None, choices=("w", "s"),
                    help="directions (.npy): W or S (StyleCLIP global) space; "
                         "inferred from the shape by default")
    ad.add_argument("--json", action="store_true")
    return p


def _fmt_size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


def _progress() -> Any:
    state = {"t": 0.0}

    def cb(name: str, got: int, total: int | None) -> None:
        now = time.monotonic()
        if now - state["t"] < 0.5 and (total is None or got < total):
            return
        state["t"] = now
        pct = f" {100 * got / total:.0f}%" if total else ""
        print(f"\r  {name}: {_fmt_size(got)}{pct}", end="", file=sys.stderr, flush=True)
        if total is not None and got >= total:
            print(file=sys.stderr)
    return cb


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from engine.models.store import Store, describe_manifest

    store = Store()
    if args.cmd == "list":
        rows = describe_manifest(store)
        users = store.user_models()
        from engine.models.modelset import _tiny_paths

        tiny = all(p.is_file() for p in _tiny_paths(store))
        doc = {"home": str(store.home), "files": rows, "user_models": users,
               "official_complete": store.official_complete(),
               "official_missing": store.official_missing(),
               "tiny_built": tiny}
        if args.json:
            print(json.dumps(doc, indent=2, default=str))
            return 0
        print(f"model store: {store.home}")
        w = max(len(r["name"]) for r in rows)
        for r in rows:
            lic = r["licence"]["title"] + ("" if r["licence_accepted"] else
                                           " [terms not accepted]")
            req = "required" if r["required"] else "optional"
            print(f"  {r['name']:<{w}}  {r['state']:<18} {req:<8} "
                  f"{_fmt_size(r['size']):>9}  {lic}")
        state = "complete" if doc["official_complete"] else \
            "incomplete (missing: " + ", ".join(doc["official_missing"]) + ")"
        print(f"official profile: {state}")
        print(f"tiny profile: {'built' if tiny else 'built on first use'} "
              f"(random test networks)")
        if users:
            print("user models:")
            for n, u in users.items():
                print(f"  {n}: {u.get('kind')} ({u.get('format')}) {u.get('path')}")
        return 0
    if args.cmd == "verify":
        res = store.verify()
        bad = [r for r in res if r["status"] not in ("ok", "unrecorded")]
        if args.json:
            print(json.dumps(res, indent=2))
        else:
            if not res:
                print("nothing installed")
            for r in res:
                print(f"  {r['name']}: {r['status']}" +
                      (f" - {r['detail']}" if r.get("detail") else ""))
        return 1 if bad else 0
    if args.cmd == "install":
        reps = store.install_from(args.src, accept_licence=args.accept)
        return _report(reps, args.json, f"no manifest files found in {args.src}")
    if args.cmd == "fetch":
        reps = store.fetch(args.names or None, accept_licence=args.accept,
                           base_url=args.base_url,
                           progress=None if args.json else _progress())
        rc = _report(reps, args.json, "nothing to fetch")
        if not args.json and not args.names and store.official_missing():
            from engine.models.store import manifest_entry

            print("still missing (no direct download; fetch them by hand, then run "
                  "'facestitch models install --from FOLDER --accept-licence'):")
            for n in store.official_missing():
                e = manifest_entry(n.split(" ")[0], store.manifest)
                print(f"  {n}: {e.page}")
        return rc
    if args.cmd == "add":
        from engine.models.checkpoints import inspect_checkpoint, sniff_format

        if sniff_format(args.path) == "npy":
            from engine.models.directions import install_direction

            d = install_direction(store, args.name, args.path, profile=args.profile,
                                  space=args.space)
            if args.json:
                print(json.dumps(d.to_dict(), indent=2))
            else:
                print(f"added {d.space.upper()}-space direction {d.name} to the "
                      f"{args.profile} profile -> {d.path}")
            return 0
        info = inspect_checkpoint(args.path)
        rec = store.add_user_model(args.name, args.path, info, copy=not args.no_copy)
        if args.json:
            print(json.dumps({"name": args.name, **rec}, indent=2, default=str))
        else:
            cfg = info.get("config", {})
            what = info["kind"]
            if "img_resolution" in info:
                what += f" {info['img_resolution']} px, {info.get('num_ws')} ws"
            print(f"added {args.name}: {what} ({info['format']}) -> {rec['path']}")
            _ = cfg
        return 0
    return 2  # pragma: no cover


def _report(reps: list[Any], as_json: bool, empty: str) -> int:
    if as_json:
        print(json.dumps([r.to_dict() for r in reps], indent=2))
        return 0
    if not reps:
        print(empty)
    for r in reps:
        print(f"  {r.name}: {r.status} ({r.hash_check} sha256 {r.sha256[:12]}...) "
              f"-> {r.path}")
    return 0
