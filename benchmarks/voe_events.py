"""Which moments of normal clips hold each violation type back: a bundle's surprise against the simulator's events.

    .venv/bin/python benchmarks/voe_events.py [--model default] [--pairs 40] [--no-stall] [--json out.json]

ROC-AUC of per-clip peak surprise loses wherever a normal clip peaks above a violating one. For the VoE pairs
`ami-edge eval-voe` scores (the same seeds, from 1 000 000; splices are left out, having no single world to label),
every frame of both clips is labelled with what the simulator did in the moves the prediction there depends on (the
two it predicts and the one into its context's last frame; `clip_events`): two bodies collided ("contact"), a body
bounced off a wall, the floor or the ceiling ("bounce"), a body crossed the occluder's edge ("occluder"), or none of
these ("free"). The script reports
- where the normal clips peak, by event (a frame with several counts as the first of contact, bounce, occluder);
- the median surprise of normal frames by event;
- per violation type, the ROC-AUC as measured and as it would be if every frame with the given events had scored
  no higher than its clip's median frame, i.e. for a model that predicted those events as well as a calm moment,
  with its response to the violation unchanged (the violating clip's frames from the violation on are kept).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ami_edge import load_bundle
from ami_edge.errors import AmiEdgeError
from ami_edge.export.demo.voe import EVENTS, bundle_scorer, make_pairs, pair_events, roc_auc
from ami_edge.world import VIOLATIONS as KINDS  # the physics violations: a splice has no single world to label
PEAK_ORDER = EVENTS + ("free",)
# The event sets whose frames the AUC table scores as calm, one column each.
DROPS = ((), ("contact",), ("bounce",), ("occluder",), ("contact", "bounce"), EVENTS)


def label(events: frozenset[str]) -> str:
    """One name for a frame's events: the first of contact, bounce, occluder that happened, else free."""
    return next((e for e in EVENTS if e in events), "free")


def calmed(trace: np.ndarray, events: list[frozenset[str]], drop: tuple[str, ...], keep_from: int | None = None
           ) -> np.ndarray:
    """`trace` (surprise per frame, NaN where none) with every frame whose events meet `drop` lowered to the clip's
    median frame, except frames from `keep_from` on."""
    out = trace.copy()
    calm = np.nanmedian(trace)
    for t, ev in enumerate(events):
        if ev.intersection(drop) and (keep_from is None or t < keep_from):
            out[t] = min(out[t], calm)
    return out


def auc_if_calm(violating: list[np.ndarray], normal: list[np.ndarray], v_events: list, n_events: list,
                frames: list[int], drop: tuple[str, ...]) -> float:
    """ROC-AUC of peak surprise with the frames of `drop` events scored as calm (see `calmed`); the violating
    clips keep their frames from the violation (`frames`) on."""
    peak_v = [np.nanmax(calmed(s, e, drop, f)) for s, e, f in zip(violating, v_events, frames)]
    peak_n = [np.nanmax(calmed(s, e, drop)) for s, e in zip(normal, n_events)]
    return roc_auc(np.array(peak_v), np.array(peak_n))


def analyse(score, kinds: tuple[str, ...], pairs: int) -> dict:
    """Traces, labels and the report for `pairs` pairs of each kind scored by `score(frames) -> surprise per frame`."""
    report: dict = {"auc": {}, "peaks": dict.fromkeys(PEAK_ORDER, 0)}
    by_event: dict[str, list[float]] = {name: [] for name in PEAK_ORDER}
    for kind in kinds:
        items = make_pairs(kind, pairs)
        v, n, ve, ne = [], [], [], []
        for p in items:
            normal_events, violating_events = pair_events(p)
            v.append(score(p.violating))
            n.append(score(p.normal))
            ve.append(violating_events)
            ne.append(normal_events)
        frames = [p.frame for p in items]
        report["auc"][kind] = {"+".join(drop) or "as measured": round(auc_if_calm(v, n, ve, ne, frames, drop), 3)
                               for drop in DROPS}
        for trace, events in zip(n, ne):
            report["peaks"][label(events[int(np.nanargmax(trace))])] += 1
            for t, ev in enumerate(events):
                if not np.isnan(trace[t]):
                    by_event[label(ev)].append(float(trace[t]))
    report["median_normal"] = {k: round(float(np.median(x)), 3) if x else None for k, x in by_event.items()}
    report["frames_normal"] = {k: len(x) for k, x in by_event.items()}
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default", help="a demo video bundle (default: the shipped one)")
    p.add_argument("--pairs", type=int, default=40, help="pairs per violation type (default 40, as eval-voe)")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"violation types (default {','.join(KINDS)})")
    p.add_argument("--no-stall", action="store_true", help="leave out the bundle's stall term (latent.stall)")
    p.add_argument("--json", type=Path, help="also write the report here")
    args = p.parse_args()
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds or args.pairs < 1:
        print(f"error: --kinds takes some of {','.join(KINDS)} (splices cannot be labelled) and --pairs >= 1; got "
              f"{args.kinds!r}, {args.pairs}", file=sys.stderr)
        return 1
    try:
        score = bundle_scorer(load_bundle(args.model), stall=not args.no_stall)
    except (AmiEdgeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    report = analyse(score, kinds, args.pairs)
    report["model"], report["stall"] = args.model, not args.no_stall
    print(f"{args.model}, {args.pairs} pairs per type, stall term {'off' if args.no_stall else 'as the bundle has it'}")
    total = sum(report["peaks"].values())
    print("normal clips peak at: " + ", ".join(f"{k} {v}" for k, v in report["peaks"].items()) + f" (of {total})")
    print("median surprise of normal frames: " + ", ".join(
        f"{k} {v} ({report['frames_normal'][k]} frames)" for k, v in report["median_normal"].items()))
    cols = list(next(iter(report["auc"].values())))
    print("ROC-AUC if these events scored as calm frames:")
    print(f"| violation | {' | '.join(cols)} |")
    print("|---" * (len(cols) + 1) + "|")
    for kind, row in report["auc"].items():
        print(f"| {kind} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + " |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
