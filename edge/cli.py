"""The `ami-edge` command line.

Subcommands live in a registry filled by `@command`. Commands whose implementation needs an extra (torch for
`export`) import it inside `run`, so `ami-edge --help` and the runtime commands work on a device without torch.
User errors (`AmiEdgeError`) print one line and exit 1; `--verbose` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import __version__
from .errors import AmiEdgeError, MissingExtraError

# The surprise reduction `ami-edge train-demo` records in the bundles it makes (the shipped defaults' recipe), and
# the offset of its stall term (`latent.stall`; README "What moved the numbers", stop 19).
DEMO_SURPRISE = "top4"
DEMO_STALL_OFFSET = 1.0


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, run: Callable[[argparse.Namespace], int]):
    """Register a subcommand: decorates the function that adds its arguments."""

    def wrap(configure: Callable[[argparse.ArgumentParser], None]):
        COMMANDS[name] = Command(name, help, configure, run)
        return configure

    return wrap


def lazy(module: str, extra: str, func: str = "run") -> Callable[[argparse.Namespace], int]:
    """A `run` that imports `module` (which needs `extra`) only when the command runs, then calls `func`."""

    def run(args: argparse.Namespace) -> int:
        try:
            impl = importlib.import_module(module)
        except ImportError as exc:
            missing = exc.name or "a dependency"
            raise MissingExtraError(f"`ami-edge {args.command}` needs {missing}, which is not installed: "
                                    f"pip install 'ami-edge[{extra}]'") from exc
        return getattr(impl, func)(args)

    return run


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _int_at_least(text: str, least: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


def _non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "an integer >= 0")


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _surprise(text: str) -> str:
    from .bundle import check_surprise

    try:
        check_surprise(text, sys.maxsize)  # K's upper bound depends on the model and is checked with it
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected mean or topK (K a positive integer, e.g. top4), got {text!r}") \
            from None
    return text


def _resolution(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SIZE or HxW, got {text!r}") from None
    if len(values) not in (1, 2) or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected SIZE or HxW with positive sizes, got {text!r}")
    return (values[0], values[-1])


@command("export", "load a JEPA checkpoint and export it to a verified ONNX model bundle",
         run=lazy("ami_edge.export.cli", "export"))
def _configure_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", nargs="?", default="preset:tiny",
                   help="checkpoint: an official .pt/.pth, a Hugging Face model directory, an ami-edge native "
                        ".safetensors, or preset:NAME for a built-in random model (default: preset:tiny)")
    p.add_argument("--out", help="bundle directory to write (default: ./NAME.amiedge)")
    p.add_argument("--name", help="bundle name recorded in the manifest (default: from --out)")
    p.add_argument("--family", default="auto", choices=["auto", "vjepa2", "vjepa", "ijepa", "hf", "native"],
                   help="checkpoint format (default: auto-detect where unambiguous)")
    p.add_argument("--checkpoint-key", help="top-level key holding the encoder in an official checkpoint "
                                            "(default: first of target_encoder, ema_encoder, encoder)")
    p.add_argument("--resolution", type=_resolution, help="input size SIZE or HxW in pixels")
    p.add_argument("--frames", type=_positive_int, help="frames per clip of the exported encoder")
    p.add_argument("--num-heads", type=_positive_int, help="encoder attention heads, when not an official width")
    p.add_argument("--pred-num-heads", type=_positive_int, help="predictor attention heads, when not official")
    p.add_argument("--graphs", type=_csv, help="comma-separated subset of encoder,predictor,ac_predictor")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, >= 17 (default 18)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="max abs difference ONNX Runtime vs torch before export fails (default 1e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the parity inputs and of preset weights")
    p.add_argument("--surprise", type=_surprise, default="mean",
                   help="how the runtime reduces per-token prediction errors to a frame's surprise: mean (all "
                        "tokens of the step) or topK (the K worst predicted tokens; default mean)")


@command("train-demo", "train the default JEPA world model on the built-in synthetic world (CPU, minutes)",
         run=lazy("ami_edge.export.demo.cli", "export", "train_demo"))
def _configure_train_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="build/demo", help="directory for the checkpoint, plot, history and bundle "
                                                     "(default: build/demo)")
    p.add_argument("--steps", type=_positive_int, default=1000,
                   help="training steps (default 1000, the shipped default bundle's recipe)")
    p.add_argument("--horizon", type=_positive_int, default=3,
                   help="tubelet steps ahead the first-stage predictor learns, 1 to this (default 3; see "
                        "--horizon-sampling)")
    p.add_argument("--residual-steps", type=_non_negative_int, default=3600,
                   help="second stage: steps training a next-step residual predictor on the frozen encoder "
                        "(default 3600; 0 skips it)")
    p.add_argument("--residual-arch", choices=["conv", "vit"], default="conv",
                   help="second stage's predictor: conv, a fresh convolutional predictor over the token grid "
                        "(default), or vit, the first stage's predictor fine-tuned (the previous recipe)")
    p.add_argument("--residual-examples", type=_positive_int, default=16000,
                   help="second stage: next-step clips the frozen encoder encodes once for it (default 16000)")
    p.add_argument("--batch", type=_positive_int, default=16, help="clips per step (default 16)")
    p.add_argument("--horizon-sampling", choices=["one", "all"], default="one",
                   help="first stage: one horizon drawn per clip (default; a third of the teacher and predictor "
                        "cost at --horizon 3) or all of them for every clip")
    p.add_argument("--target-fraction", type=float, default=0.25,
                   help="first stage: fraction of a target step's tokens the predictor predicts, drawn per clip "
                        "(default 0.25)")
    p.add_argument("--patch", type=_positive_int, default=4,
                   help="encoder patch size in pixels: 64 px frames make a (64/PATCH)^2 token grid per tubelet "
                        "step (default 4: 16x16)")
    p.add_argument("--width", type=_positive_int, default=64, help="encoder width, a multiple of 4 (default 64)")
    p.add_argument("--depth", type=_positive_int, default=3, help="encoder blocks (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the worlds, the weights and the data order")
    p.add_argument("--threads", type=_positive_int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--eval-pairs", type=int, default=40,
                   help="VoE clip pairs per violation type for the final evaluation (0 skips it)")
    p.add_argument("--surprise", type=_surprise, default=DEMO_SURPRISE,
                   help=f"surprise reduction recorded in the bundles: mean or topK (default {DEMO_SURPRISE}, "
                        "the K worst predicted tokens: events of one small object are not averaged away); with "
                        "topK the second stage's loss adds each example's K worst tokens, with mean it does not")
    p.add_argument("--stall-offset", type=_non_negative_float, default=DEMO_STALL_OFFSET,
                   help="offset of the stall term recorded in the bundles (motion predicted that did not happen: "
                        f"error / (token change + OFFSET), weight fitted on calm scenes; default {DEMO_STALL_OFFSET:g}"
                        "; 0 leaves the term out)")
    p.add_argument("--stall-clips", type=_positive_int, default=40,
                   help="calm 36-frame clips the stall term's weight is fitted on (default 40)")


@command("distill", "distill a JEPA teacher (checkpoint or bundle) into a smaller student bundle, with a report",
         run=lazy("ami_edge.export.distill", "export"))
def _configure_distill(p: argparse.ArgumentParser) -> None:
    p.add_argument("teacher", nargs="?", default="default-fp32",
                   help="teacher: a bundle (path or shipped name), an official .pt, a Hugging Face directory, a "
                        "native .safetensors or preset:NAME (default: the shipped default bundle)")
    p.add_argument("--family", default="auto", choices=["auto", "vjepa2", "vjepa", "ijepa", "hf", "native"],
                   help="teacher checkpoint format (default: auto-detect)")
    p.add_argument("--source", action="append", help="training frames: a source URI, repeatable (default: demo, "
                                                     "the built-in synthetic world with hundreds of scenes)")
    p.add_argument("--out", default="build/distill", help="run directory: checkpoint, plot, report, bundle "
                                                         "(default: build/distill)")
    p.add_argument("--name", default="student", help="student bundle name, written to OUT/NAME.amiedge")
    g = p.add_argument_group("student (default: half the teacher's width and depth)")
    g.add_argument("--width", type=_positive_int, help="encoder width")
    g.add_argument("--depth", type=_positive_int, help="encoder blocks")
    g.add_argument("--heads", type=_positive_int, help="encoder attention heads (default: keep head width)")
    g.add_argument("--pred-width", type=_positive_int, help="predictor width")
    g.add_argument("--pred-depth", type=_positive_int, help="predictor blocks")
    g.add_argument("--pred-heads", type=_positive_int, help="predictor attention heads")
    g.add_argument("--resolution", type=_positive_int, help="input height in pixels (default: the teacher's)")
    g.add_argument("--frames", type=_positive_int, help="frames per clip, at most the teacher's")
    g.add_argument("--patch", type=_positive_int, help="patch size in pixels (default: the teacher's)")
    p.add_argument("--steps", type=_positive_int, default=1500, help="optimizer steps (default 1500)")
    p.add_argument("--batch", type=_positive_int, default=16, help="clips per step and process (default 16)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    p.add_argument("--self-weight", type=float, default=0.5,
                   help="weight of the student predicting its own next-step tokens (default 0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the student's weights and the data")
    p.add_argument("--save-every", type=_positive_int, default=250, help="checkpoint every N steps (default 250)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (default: cores / processes)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: cuda when available")
    p.add_argument("--voe-pairs", type=int, default=40,
                   help="VoE clip pairs per violation type for teacher and student (default 40; 0 skips)")
    p.add_argument("--surprise", type=_surprise,
                   help="surprise reduction for the VoE of both and the student bundle: mean or topK (default: "
                        "the teacher bundle's own; mean for a checkpoint)")


@command("eval-voe", "violation-of-expectation evaluation of a bundle's surprise (ROC-AUC per violation type)",
         run=lazy("ami_edge.export.demo.cli", "export", "eval_voe"))
def _configure_eval_voe(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="bundle path or shipped name (default: default)")
    p.add_argument("--pairs", type=_positive_int, default=40, help="clip pairs per violation type (default 40)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--surprise", type=_surprise,
                   help="evaluate with this surprise reduction instead of the bundle's own (mean or topK)")
    p.add_argument("--no-stall", action="store_true", help="leave out the bundle's stall term (latent.stall)")


@command("firmware", "firmware-side tools: export-c DIR copies the portable C protocol files and test vectors",
         run=lambda a: _firmware(a))
def _configure_firmware(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["export-c"], help="export-c: write the C99 bridge sources to DIR")
    p.add_argument("dir", help="destination directory (must not exist yet)")


def _firmware(args: argparse.Namespace) -> int:
    import shutil
    from importlib import resources
    from pathlib import Path

    from .errors import ConfigError

    out = Path(args.dir)
    if out.exists():
        raise ConfigError(f"{out} already exists; choose a new directory (export-c never overwrites files)")
    pkg = resources.files("ami_edge.firmware_bridge")
    files = {"ami_bridge.h": "c/ami_bridge.h", "ami_bridge.c": "c/ami_bridge.c", "example/main.c": "c/example/main.c",
             "vectors/frames.json": "vectors/frames.json"}
    for dst, src in files.items():
        target = out / dst
        target.parent.mkdir(parents=True, exist_ok=True)
        with resources.as_file(pkg.joinpath(src)) as path:
            shutil.copyfile(path, target)
    doc = pkg.joinpath("firmware_bridge.md")
    if doc.is_file():
        with resources.as_file(doc) as path:
            shutil.copyfile(path, out / "firmware_bridge.md")
    print(f"wrote {len(files) + doc.is_file()} files to {out}: build with cc -std=c99 ami_bridge.c example/main.c")
    return 0


@command("serve", "run a model bundle on a frame source and report latent state, predictions and surprise",
         run=lambda a: importlib.import_module("ami_edge.serve").run(a))
def _configure_serve(p: argparse.ArgumentParser) -> None:
    # Defaults live in ServeConfig: a flag left out keeps the config file's value (or the default).
    p.add_argument("--config", help="TOML file with any of the options below (flags win)")
    p.add_argument("--model", help="bundle path or shipped name (default: default)")
    p.add_argument("--source", help="frame source: auto (default: first camera, else synthetic://), v4l2:///dev/video0 "
                                    "or 0, csi://0, rtsp://..., file://clip.mp4 or a path, synthetic://bouncing")
    p.add_argument("--backend", help="auto | onnxruntime[:cpu|cuda|tensorrt] | tensorrt[:fp16|int8|fp32] | torch "
                                     "(reference; needs [export] and the source checkpoint) (default: auto)")
    p.add_argument("--publish", action="append", metavar="URI",
                   help="send states to URI, repeatable: serial:///dev/ttyACM0?baud=921600&latent_dim=16")
    p.add_argument("--max-frames", type=_positive_int, help="stop after this many states")
    p.add_argument("--threshold", type=float, help="surprise z-score that flags an event (default: 4, or the "
                                                   "--surprise-calibration's)")
    p.add_argument("--http", metavar="HOST:PORT", help="serve /metrics and /healthz, e.g. 127.0.0.1:8080")
    p.add_argument("--http-token", help="required to bind --http beyond localhost")
    p.add_argument("--camera", metavar="camera.json", help="camera intrinsics: undistort frames before the model")
    p.add_argument("--surprise-calibration", metavar="surprise.json",
                   help="calm baseline and threshold from `ami-edge calibrate surprise` for this model")
    p.add_argument("--control", metavar="zmq://HOST:PORT", help="accept actions / commands (off by default)")
    p.add_argument("--control-token", help="required to bind --control beyond localhost")


@command("bench", "bare-model latency vs full-pipeline throughput, efficiency and capture-to-state latency",
         run=lambda a: importlib.import_module("ami_edge.bench").run(a))
def _configure_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="bundle path or shipped name (default: default)")
    p.add_argument("--frames", type=_positive_int, default=300, help="frames per run (default 300)")
    p.add_argument("--repeats", type=_positive_int, default=3, help="runs; medians are reported (default 3)")
    p.add_argument("--backend", default="auto", help="auto | onnxruntime[:cpu|cuda|tensorrt] | "
                                                     "tensorrt[:fp16|int8|fp32] | torch (reference)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


@command("build-engine", "build TensorRT engines for a bundle's graphs on this device (cached in the bundle)",
         run=lambda a: importlib.import_module("ami_edge.trt").run_build_engine(a))
def _configure_build_engine(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="NAME.amiedge directory or shipped bundle name")
    p.add_argument("--graphs", type=_csv, help="comma-separated subset of encoder,predictor,ac_predictor "
                                               "(default: every graph in the bundle)")
    p.add_argument("--precision", choices=["fp16", "int8", "fp32"],
                   help="engine precision (default: int8 for QDQ-quantized graphs, else fp16)")
    p.add_argument("--workspace", type=_positive_int, default=2048, metavar="MiB",
                   help="TensorRT builder workspace limit in MiB (default 2048)")
    p.add_argument("--max-batch", type=_positive_int, default=1, help="largest batch the engine accepts (default 1)")
    p.add_argument("--rebuild", action="store_true", help="build even when a matching engine is cached")
    p.add_argument("--cache-dir", help="engine cache directory (default: BUNDLE/engines, or $AMI_EDGE_CACHE / "
                                       "~/.cache/ami-edge/engines when the bundle is read-only)")


@command("doctor", "check Python, ONNX Runtime providers, GPU, TensorRT, OpenCV, cameras and serial ports",
         run=lambda a: importlib.import_module("ami_edge.doctor").run(a))
def _configure_doctor(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the checks as JSON")


@command("listen", "subscribe to an ami-edge publisher (found by zeroconf, or --connect) and print what arrives",
         run=lambda a: _listen(a))
def _configure_listen(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="pick the publisher whose service name contains this")
    p.add_argument("--connect", help="tcp://HOST:PORT, for networks without multicast")
    p.add_argument("--count", type=_positive_int, help="stop after N state messages")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for discovery / a message")
    p.add_argument("--json", action="store_true", help="one JSON object per message (header plus array stats)")


def _listen(args: argparse.Namespace) -> int:
    import json

    from .client import DiscoveryError, Subscriber, discover

    if args.connect:
        target = args.connect
    else:
        services = discover(args.timeout, name=args.name)
        if not services:
            raise DiscoveryError(f"no ami-edge publisher found in {args.timeout:g} s; is `ami-edge serve --publish "
                                 "zmq://...` running? Without multicast, pass --connect tcp://HOST:PORT")
        target = services[0]
        print(f"ami-edge listen: {target.name} at {target.endpoint} (model {target.txt.get('model')})",
              file=sys.stderr, flush=True)
    count = 0
    with Subscriber(target, timeout=args.timeout) as sub:
        for msg in sub:
            count += 1
            if args.json:
                out = {k: v for k, v in msg.header.items() if k != "arrays"}
                out["arrays"] = {k: {"shape": list(a.shape), "norm": float((a.astype(float) ** 2).sum() ** 0.5)}
                                 for k, a in msg.arrays.items()}
                print(json.dumps(out), flush=True)
            else:
                s = msg.header.get("surprise")
                print(f"n {msg.n:>7}  seq {msg.seq:>7}  surprise {'--' if s is None else f'{s:+7.2f}'}  "
                      f"event {int(msg.event)}  latent[:3] {msg.arrays['latent'][:3].round(3).tolist()}", flush=True)
            if args.count and count >= args.count:
                break
        print(f"ami-edge listen: {count} messages, {sub.gaps} missed (counter gaps)", file=sys.stderr)
    if not count:
        raise AmiEdgeError(f"no message from {sub.endpoint} within {args.timeout:g} s; is the publisher running?")
    return 0


# `ami-edge calibrate WHAT`: each WHAT is a module ami_edge.calibration.WHAT exposing HELP, configure(parser) and
# run(args); modules keep heavy imports inside run() so building the parser stays cheap.
CALIBRATE_COMMANDS: tuple[str, ...] = ("collect", "camera", "surprise")


@command("calibrate", "calibration data: INT8 calibration frames, camera intrinsics, surprise baselines",
         run=lambda a: importlib.import_module(f"ami_edge.calibration.{a.what}").run(a))
def _configure_calibrate(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    for name in CALIBRATE_COMMANDS:
        module = importlib.import_module(f"ami_edge.calibration.{name}")
        q = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.configure(q)


@command("quantize", "INT8 (QDQ) or FP16 copy of an FP32 bundle, with an accuracy report against FP32 and a gate",
         run=lazy("ami_edge.export.quantize", "export"))
def _configure_quantize(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="the FP32 bundle (path or shipped name)")
    p.add_argument("--out", required=True, help="bundle directory to write, e.g. build/tiny-int8.amiedge")
    p.add_argument("--name", help="bundle name recorded in the manifest (default: from --out)")
    p.add_argument("--precision", choices=["int8", "fp16"], default="int8", help="default int8")
    p.add_argument("--calib", help="calibration frames from `ami-edge calibrate collect` (int8)")
    p.add_argument("--source", help="or collect calibration frames from this source URI now (int8)")
    p.add_argument("--calib-frames", type=_positive_int, default=128,
                   help="frames to collect with --source (default 128)")
    p.add_argument("--max-clips", type=_positive_int, default=256,
                   help="calibration clips used at most, spread over the file (default 256)")
    p.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax",
                   help="activation range calibration (default minmax)")
    p.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=True,
                   help="per-output-channel weight scales (default on)")
    p.add_argument("--activation-type", choices=["int8", "uint8"], default="int8",
                   help="int8: symmetric, what TensorRT needs (default); uint8: asymmetric")
    p.add_argument("--eval-source", default="synthetic://bouncing?seed=424242",
                   help="held-out frames for the accuracy report (default synthetic://bouncing?seed=424242)")
    p.add_argument("--eval-frames", type=_positive_int, default=64, help="held-out frames (default 64)")
    p.add_argument("--voe-pairs", type=int, default=10,
                   help="VoE clip pairs per violation type for the AUC delta (default 10; 0 skips)")
    p.add_argument("--min-cosine", type=float, default=0.99,
                   help="refuse the result below this mean latent cosine vs FP32 (default 0.99)")
    p.add_argument("--max-auc-drop", type=float, default=0.02,
                   help="refuse the result when VoE-AUC moves by more than this (default 0.02)")


@command("compare", "run two bundles (or one bundle on two backends) on the same frames and compare outputs",
         run=lambda a: importlib.import_module("ami_edge.compare").run(a))
def _configure_compare(p: argparse.ArgumentParser) -> None:
    importlib.import_module("ami_edge.compare").configure(p)


@command("info", "validate a model bundle and print its manifest summary", run=lambda a: _info(a))
def _configure_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="NAME.amiedge directory or shipped bundle name")
    p.add_argument("--json", action="store_true", help="print the whole manifest as JSON")


def _info(args: argparse.Namespace) -> int:
    import json

    from .bundle import load_bundle

    bundle = load_bundle(args.bundle)
    m = bundle.manifest
    if args.json:
        print(json.dumps(m.to_dict(), indent=2))
        return 0
    print(f"{m.name} ({m.family}) at {bundle.path}")
    i = m.input
    print(f"  input   {i.layout} frames={i.frames} tubelet={i.tubelet} {i.height}x{i.width}")
    stall = m.latent.stall
    print(f"  latent  tokens={m.latent.tokens} dim={m.latent.dim} grid={list(m.latent.grid)} "
          f"surprise={m.latent.surprise}"
          + ("" if stall is None else f" stall(offset={stall.offset:g}, weight={stall.weight:g})"))
    for name, g in m.graphs.items():
        worst = m.parity.get("graphs", {}).get(name, {}).get("max_abs")
        parity = f"parity max_abs={worst:.2e}" if isinstance(worst, float) else "parity n/a"
        print(f"  {name:<12} {g.file} {g.precision} opset {g.opset} {parity}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ami-edge", description="Run JEPA world models on wearables and robots.")
    parser.add_argument("--version", action="version", version=f"ami-edge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks and library warnings")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks and library warnings")
        cmd.configure(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except AmiEdgeError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"ami-edge {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ami-edge {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ami-edge info x | head`: the reader left early, which is no error to report
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when stdout is flushed
        return 141


if __name__ == "__main__":
    sys.exit(main())
