"""The runtime package is what a Jetson installs: it must import and run its CLI without torch or TensorRT."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Makes `import torch` (and tensorrt, onnx) fail in the child, as on a device without the [export] extra.
BLOCK = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "tensorrt", "onnx", "onnxscript", "transformers"}:
                raise ImportError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, Block())
""")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_import_runtime_without_torch():
    proc = _python("""
        import ami_edge, ami_edge.bundle, ami_edge.cli
        from ami_edge import load_bundle, Bundle, BundleError
        ami_edge.cli.build_parser()
        import ami_edge.calibration, ami_edge.firmware_bridge
        frames = list(ami_edge.open_source("synthetic://pusher?seed=1&size=32&frames=3"))
        assert frames[2].image.shape == (32, 32, 3) and frames[2].action.shape == (2,)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "tensorrt"})
        assert not heavy, heavy
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_shipped_default_bundle_runs_without_torch():
    """`load_bundle("default")` and a Runtime on it need only the runtime dependencies (what `serve` uses)."""
    proc = _python("""
        from ami_edge import Runtime, load_bundle
        bundle = load_bundle("default")
        m = bundle.manifest
        assert set(m.graphs) == {"encoder", "predictor", "ac_predictor"}, m.graphs
        with Runtime("default", source="synthetic://bouncing?seed=2&size=96") as rt:
            states = list(rt.stream(max_frames=12))
        assert len(states) == 12 and states[-1].latent.shape == (m.latent.dim,)
        assert states[-1].prediction is not None and states[-1].raw_surprise is not None
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "tensorrt", "onnx"})
        assert not heavy, heavy
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_plain_import_pulls_no_heavy_modules():
    """Even where torch is installed, `import ami_edge` must not load it (start-up time on a device)."""
    proc = subprocess.run([sys.executable, "-c", "import sys, ami_edge, ami_edge.cli; "
                           "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tensorrt')))"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr


def test_export_without_extra_names_it():
    proc = _python("""
        from ami_edge.cli import main
        sys.exit(main(["export"]))
    """)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'ami-edge[export]'" in lines[0] and "torch" in lines[0], proc.stderr
