"""Full-size distill -> quantize -> compare on the demo world, with the README's table.

    .venv/bin/python benchmarks/distill_demo.py [--teacher default] [--out build/distill-demo] [--steps 1500]
        [--voe-pairs 40] [--json results.json] [-- EXTRA DISTILL FLAGS]

Runs, as a user would, in fresh processes:
1. `ami-edge distill TEACHER --out OUT` with the student flags below (default: the shipped default bundle into a
   32-wide, 2-block encoder and a 32-wide, 1-block predictor: 12.5x fewer FLOPs per step);
2. `ami-edge quantize OUT/student.amiedge` (INT8 QDQ, calibration frames from the demo world, accuracy report);
3. `ami-edge compare` FP32 student vs INT8 student on held-out frames;
then prints one markdown table: params, FLOPs, teacher<->student latent cosine, VoE-AUC per violation type of
teacher and student (the same held-out pairs), the share of the teacher's mean VoE-AUC the student keeps, and the
INT8 student's cosine against the FP32 student. The CI-sized version of this is tests/test_distill.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

STUDENT = ["--width", "32", "--depth", "2", "--pred-width", "32", "--pred-depth", "1"]


def cli(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "ami_edge", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"ami-edge {args[0]} failed:\n{proc.stderr[-3000:]}")
    return proc


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="default-fp32")
    p.add_argument("--out", default="build/distill-demo")
    p.add_argument("--steps", default="1500")
    p.add_argument("--voe-pairs", default="40")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("extra", nargs="*", help="distill flags replacing the default student (after --)")
    args = p.parse_args()
    out = Path(args.out)
    student_flags = args.extra or STUDENT

    start = time.perf_counter()
    resume = ["--resume"] if (out / "checkpoint.safetensors").exists() else []
    cli("distill", args.teacher, "--out", str(out), "--steps", args.steps, "--voe-pairs", args.voe_pairs,
        *student_flags, *resume)
    minutes = (time.perf_counter() - start) / 60
    report = json.loads((out / "report.json").read_text())
    student, q = out / "student.amiedge", out / "student-int8.amiedge"
    cli("quantize", str(student), "--out", str(q), "--source", "synthetic://bouncing?seed=5", "--voe-pairs", "20",
        "--max-auc-drop", "0.05")
    cmp = json.loads(cli("compare", str(student), str(q), "--source", "synthetic://bouncing?seed=11",
                         "--frames", "64", "--json").stdout)

    t, s = report["teacher"], report["student"]
    print(f"distill: {minutes:.1f} min ({report['steps']} steps, {report['world_size']} process(es)); "
          f"flags {' '.join(student_flags)}\n")
    print("| | teacher | student |")
    print("|---|---|---|")
    print(f"| params | {t['params'] / 1e6:.3f} M | {s['params'] / 1e6:.3f} M |")
    print(f"| FLOPs per step (encoder + predictor) | {t['flops'] / 1e6:.1f} M | {s['flops'] / 1e6:.1f} M "
          f"({report['flops_ratio']:.1f}x fewer) |")
    print(f"| latent cosine teacher <-> student (through P, held-out) | | {report['latent_cosine']:.3f} |")
    print(f"| prediction cosine (through P, held-out) | | {report['prediction_cosine']:.3f} |")
    if "voe_student" in report:
        for kind, auc in report["voe_teacher"]["auc"].items():
            print(f"| VoE-AUC {kind} | {auc:.3f} | {report['voe_student']['auc'][kind]:.3f} |")
        print(f"| VoE-AUC mean ({report['voe_teacher']['pairs']} pairs per type) | "
              f"{report['voe_teacher']['mean_auc']:.3f} | {report['voe_student']['mean_auc']:.3f} "
              f"({100 * report['voe_retained']:.1f} % of the teacher's) |")
    latent = cmp["outputs"]["latent"]
    print(f"| INT8 student vs FP32 student: latent cosine mean / min | | {latent['cosine']:.5f} / "
          f"{latent['cosine_min']:.5f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"report": report, "compare": cmp, "minutes": minutes}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
