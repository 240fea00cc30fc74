"""`ami-edge serve` as a user runs it: a real process, status lines, clean exit on SIGINT, one-line errors."""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import time

from .conftest import assert_one_line_error, run_cli


def test_serve_reports_and_stops_on_sigint(video_bundle):
    proc = subprocess.Popen([sys.executable, "-m", "ami_edge", "serve", "--model", str(video_bundle.path),
                             "--source", "synthetic://bouncing?size=64&fps=60"], stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(ln.startswith("fps") for ln in lines):
            ready, _, _ = select.select([proc.stderr], [], [], 0.5)
            if ready:
                lines.append(proc.stderr.readline())
        assert any("onnxruntime (CPUExecutionProvider)" in ln and "synthetic world" in ln for ln in lines), lines
        status = next(ln for ln in lines if ln.startswith("fps"))
        assert "latency p50" in status and "drops" in status and "surprise" in status
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "Traceback" not in rest
    assert "stopped (signal)" in rest, rest


def test_serve_max_frames_and_errors(tmp_path, video_bundle):
    proc = run_cli("serve", "--model", str(video_bundle.path), "--source", "synthetic://bouncing?size=64",
                   "--max-frames", "12")
    assert proc.returncode == 0 and "stopped (12 states) after 12 states" in proc.stderr, proc.stderr
    assert_one_line_error(run_cli("serve", "--model", str(video_bundle.path), "--source", "webcam://0"),
                          "unknown source scheme 'webcam://'")
    assert_one_line_error(run_cli("serve", "--model", str(tmp_path / "nope.amiedge")), "not found")
    assert_one_line_error(run_cli("serve", "--model", str(video_bundle.path), "--backend", "tflite"),
                          "unknown backend")


def test_bench_reports_efficiency(video_bundle):
    import json

    proc = run_cli("bench", "--model", str(video_bundle.path), "--frames", "20", "--repeats", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["bare_ms"] > 0 and r["pipeline_ms"] > 0
    assert r["efficiency"] == round(r["bare_ms"] / r["pipeline_ms"], 3) or abs(
        r["efficiency"] - r["bare_ms"] / r["pipeline_ms"]) < 0.01
    assert r["capture_to_state_ms_p99"] >= r["capture_to_state_ms_p50"] > 0


def test_serve_config_file(tmp_path, video_bundle):
    cfg = tmp_path / "serve.toml"
    cfg.write_text(f'model = "{video_bundle.path}"\nsource = "synthetic://bouncing?size=64"\nmax_frames = 6\n'
                   'threshold = 3.5\n')
    proc = run_cli("serve", "--config", str(cfg))
    assert proc.returncode == 0 and "after 6 states" in proc.stderr, proc.stderr
    proc = run_cli("serve", "--config", str(cfg), "--max-frames", "4")  # flags win over the file
    assert proc.returncode == 0 and "after 4 states" in proc.stderr, proc.stderr
    cfg.write_text('modle = "x"\n')
    assert_one_line_error(run_cli("serve", "--config", str(cfg)), "unknown key(s) modle; valid keys: model, source")
    cfg.write_text("threshold = -1\n")
    assert_one_line_error(run_cli("serve", "--config", str(cfg)), "'threshold' must be a number > 0")
    cfg.write_text("max_frames = [")
    assert_one_line_error(run_cli("serve", "--config", str(cfg)), "is not valid TOML")
    assert_one_line_error(run_cli("serve", "--config", str(tmp_path / "none.toml")), "cannot read config")


def test_doctor_reports_every_check():
    import json

    proc = run_cli("doctor", "--json")
    assert proc.returncode == 0, proc.stderr
    checks = {c["name"]: c for c in json.loads(proc.stdout)}
    assert set(checks) == {"python", "ami-edge", "onnxruntime", "gpu", "tensorrt", "opencv", "cameras", "serial"}
    assert "CPUExecutionProvider" in checks["onnxruntime"]["detail"]
    assert all(c["ok"] or c["fix"] for c in checks.values())  # everything missing says what to do
    assert run_cli("doctor").stdout.count("\n") >= 8


def _serve_with_http(video_bundle, *extra):
    proc = subprocess.Popen([sys.executable, "-m", "ami_edge", "serve", "--model", str(video_bundle.path),
                             "--source", "synthetic://bouncing?size=64&fps=60", *extra],
                            stderr=subprocess.PIPE, text=True)
    address, deadline = None, time.monotonic() + 60
    while time.monotonic() < deadline and address is None:
        ready, _, _ = select.select([proc.stderr], [], [], 0.5)
        if ready:
            line = proc.stderr.readline()
            if "metrics at " in line:
                address = line.split("metrics at ")[1].split("/metrics")[0]
    return proc, address


def _get(url, token=None):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_metrics_and_healthz(video_bundle):
    import json

    proc, address = _serve_with_http(video_bundle, "--http", "127.0.0.1:0")
    try:
        assert address is not None, "serve did not report its HTTP address"
        deadline = time.monotonic() + 30
        code, health = _get(f"{address}/healthz")
        while code != 200 and time.monotonic() < deadline:  # until the first state exists
            code, health = _get(f"{address}/healthz")
        assert code == 200 and json.loads(health)["status"] == "ok"
        code, text = _get(f"{address}/metrics")
        assert code == 200 and "ami_edge_states_total" in text and "ami_edge_capture_to_state_seconds_bucket" in text
        states = float(next(ln for ln in text.splitlines() if ln.startswith("ami_edge_states_total")).split()[1])
        assert states > 0
        assert _get(f"{address}/nope")[0] == 404
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_http_beyond_localhost_needs_a_token(video_bundle):
    assert_one_line_error(run_cli("serve", "--model", str(video_bundle.path), "--http", "0.0.0.0:0",
                                  "--max-frames", "1"), "beyond localhost: pass --http-token")
    proc, address = _serve_with_http(video_bundle, "--http", "0.0.0.0:0", "--http-token", "s3cret")
    try:
        local = address.replace("0.0.0.0", "127.0.0.1")
        assert _get(f"{local}/metrics")[0] == 401
        assert _get(f"{local}/metrics", token="wrong")[0] == 401
        assert _get(f"{local}/metrics", token="s3cret")[0] == 200
        assert _get(f"{local}/metrics?token=s3cret")[0] == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)


def test_serve_control_channel(video_bundle):
    import msgpack
    import zmq

    proc = subprocess.Popen([sys.executable, "-m", "ami_edge", "serve", "--model", str(video_bundle.path),
                             "--source", "synthetic://bouncing?size=64&fps=60", "--control", "zmq://127.0.0.1:0"],
                            stderr=subprocess.PIPE, text=True)
    endpoint, deadline = None, time.monotonic() + 60
    try:
        while time.monotonic() < deadline and endpoint is None:
            ready, _, _ = select.select([proc.stderr], [], [], 0.5)
            if ready and "control channel at " in (line := proc.stderr.readline()):
                endpoint = line.split("control channel at ")[1].strip()
        assert endpoint, "serve did not report its control endpoint"
        sock = zmq.Context.instance().socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sock.send(msgpack.packb({"v": 1, "type": "action", "values": [1.0, 0.0]}))
        assert sock.poll(10000) and msgpack.unpackb(sock.recv())["ok"] is True
        sock.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_serve_defaults_to_the_shipped_model_on_an_mp4(tmp_path):
    """No --model: the shipped default bundle, here on an mp4 the test writes (what a user tries first)."""
    import cv2

    from ami_edge.sources import open_source

    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 30, (96, 96))
    for frame in open_source("synthetic://bouncing?seed=4&size=96&frames=40"):
        writer.write(cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
    writer.release()
    proc = run_cli("serve", "--source", str(clip), "--max-frames", "30")
    assert proc.returncode == 0, proc.stderr
    assert "model default (BCTHW" in proc.stderr and "clip.mp4" in proc.stderr, proc.stderr
    assert "stopped (30 states) after 30 states" in proc.stderr, proc.stderr
