"""``facestitch edits [--profile P] [--json]``: the installed edit directions."""

from __future__ import annotations

import argparse
import json

__all__ = ["main"]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="facestitch edits",
                                description="List the installed edit directions.")
    p.add_argument("--profile", default="auto", choices=("auto", "official", "tiny"))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from engine.models.directions import available_edits
    from engine.models.store import Store, resolve_profile

    from engine.models.styleclip import TEXT_EDIT_FILES

    store = Store()
    profile = resolve_profile(args.profile, store)
    edits = available_edits(profile, store=store)
    text_missing = [n for n in TEXT_EDIT_FILES if store.installed(n) is None]
    if args.json:
        print(json.dumps({"profile": profile, "edits": [d.to_dict() for d in
                                                        edits.values()],
                          "text_edits": {"ready": not text_missing,
                                         "missing": text_missing}}, indent=2))
        return 0
    if profile == "tiny":
        print("profile tiny: synthetic TEST directions (not real edits); install the "
              "official set with 'facestitch models fetch --accept-licence'")
    else:
        print("profile official")
    if not edits:
        print("  no edits installed")
    w = max((len(n) for n in edits), default=4)
    for d in edits.values():
        lo, hi = d.recommended
        tag = " [test data]" if d.test_data else ""
        print(f"  {d.name:<{w}}  {d.space}-space  strength {lo:g} .. {hi:g}{tag}  "
              f"({d.licence})")
    if profile == "official" and not any(d.space == "s" for d in edits.values()):
        print("  (no S-space / StyleCLIP directions installed)")
    if text_missing:
        print(f"text edits (--edit-text): need {', '.join(text_missing)} "
              f"(facestitch models fetch --accept-licence {' '.join(text_missing)})")
    else:
        print("text edits (--edit-text): ready (CLIP ViT-B/32 and fs3.npy installed)")
    return 0
