"""The web dashboard of `ami-edge serve --http`: its JSON and preview over plain HTTP, the token, the projection maths,
and the page itself in a real headless Chromium (scripts/install-browser.sh installs it; scripts/test.sh sets
AMI_EDGE_REQUIRE_BROWSER=1 so a missing browser fails there instead of skipping).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from ami_edge.http import Timeline
from ami_edge.runtime import State

SOURCE = "synthetic://bouncing?size=96&fps=30"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
DEADLINE_S = 90.0  # generous: the tiny model shares two CPU cores with other jobs


class Serve:
    """`ami-edge serve --http 127.0.0.1:0` as a user starts it; the bound address is read from its status line."""

    def __init__(self, bundle, *extra: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "ami_edge", "serve", "--model", str(bundle.path),
                                      "--source", SOURCE, "--http", "127.0.0.1:0", *extra],
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._seen = threading.Condition()
        # Drain stderr in a thread for the whole run: the status lines must never fill the pipe and stall serve.
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        line = self.wait_for_line("dashboard at ")
        self.line = line
        self.address = re.search(r"dashboard at (http://\S+?)/[ ,]", line).group(1)

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def wait_for_line(self, fragment: str) -> str:
        deadline = time.monotonic() + DEADLINE_S
        with self._seen:
            while True:
                found = next((ln for ln in self.lines if fragment in ln), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                assert left > 0 and self.proc.poll() is None, f"no {fragment!r} from serve:\n{''.join(self.lines)}"
                self._seen.wait(timeout=min(left, 1.0))

    def stop(self) -> int:
        """SIGINT, as Ctrl-C does; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self._reader.join(timeout=10)
        return code

    def __enter__(self) -> Serve:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def _get(url: str, token: str | None = None) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def _poll(check, what: str, deadline_s: float = DEADLINE_S):
    """Call `check()` until it returns something truthy, or fail after the deadline."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
    pytest.fail(f"timed out waiting for {what}")


def _state(url: str, since: int = -1) -> dict:
    code, ctype, body = _get(f"{url}/api/state?since={since}")
    assert code == 200 and ctype == "application/json", (code, body)
    return json.loads(body)


# ------------------------------------------------------------------------------------------------ plain HTTP
def test_state_api_preview_and_page(video_bundle):
    with Serve(video_bundle) as serve:
        url = serve.address
        first = _poll(lambda: (s := _state(url)) and any(p[1] is not None for p in s["points"]) and s,
                      "scored surprise in /api/state")
        seqs = [p[0] for p in first["points"]]
        assert seqs == sorted(set(seqs)) and first["seq"] == seqs[-1]
        assert first["model"] and first["threshold"] == 4.0 and first["states"] >= len(seqs)
        assert all(isinstance(p[1], float) and p[2] in (0, 1) for p in first["points"] if p[1] is not None)
        # since=SEQ: only what came after, and the poll after it brings new states
        later = _poll(lambda: (s := _state(url, since=first["seq"]))["points"] and s, "states after the first poll")
        assert all(p[0] > first["seq"] for p in later["points"]) and later["states"] > first["states"]
        stats = later["stats"]
        assert stats["fps"] > 0 and 0 < stats["p50_ms"] <= stats["p99_ms"] and later["drops"] >= 0
        traj = later["trajectory"]
        xy = np.array(traj["xy"])  # (W, 2)
        assert xy.shape == (len(traj["seq"]), 2) and len(traj["seq"]) >= 3 and traj["seq"][-1] == later["seq"]
        assert np.isfinite(xy).all() and xy.std(0).min() > 0 and 0 < traj["explained"] <= 1

        code, ctype, jpeg = _get(f"{url}/preview.jpg?w=128")
        assert code == 200 and ctype == "image/jpeg"
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (128, 128, 3) and image.std() > 5, "preview is not the (square) synthetic scene"
        code, _, small = _get(f"{url}/preview.jpg?w=48")
        assert cv2.imdecode(np.frombuffer(small, np.uint8), cv2.IMREAD_COLOR).shape == (48, 48, 3)

        code, ctype, page = _get(f"{url}/")
        assert code == 200 and ctype.startswith("text/html") and b'<canvas id="surprise">' in page
        assert _get(f"{url}/nope")[0] == 404
        assert serve.stop() == 0
    assert "stopped (signal)" in "".join(serve.lines)


def test_token_protects_page_and_data(video_bundle):
    with Serve(video_bundle, "--http-token", "s3cret") as serve:
        url = serve.address
        assert "add ?token=TOKEN" in serve.line and "s3cret" not in "".join(serve.lines)
        for path in ("/", "/api/state", "/preview.jpg", "/metrics"):
            assert _get(f"{url}{path}")[0] == 401, path
            assert _get(f"{url}{path}?token=wrong")[0] == 401, path
            assert _get(f"{url}{path}", token="wrong")[0] == 401, path
        assert _get(f"{url}/?token=s3cret")[0] == 200
        assert _get(f"{url}/api/state?since=-1&token=s3cret")[0] == 200
        assert _get(f"{url}/api/state", token="s3cret")[0] == 200
        assert _poll(lambda: _get(f"{url}/preview.jpg?token=s3cret")[0] == 200, "a preview frame")
        assert serve.stop() == 0


# ---------------------------------------------------------------------------------------- Timeline, in-process
def _states(latents: np.ndarray, t0: float = 100.0, dt: float = 0.1, latency: float = 0.004):
    for i, z in enumerate(latents):
        yield State(seq=i, t_capture=t0 + i * dt - latency, t_done=t0 + i * dt, latent=z, prediction=None,
                    surprise=float(np.sin(i)), event=i % 7 == 0)


def test_timeline_projection_keeps_the_plane_and_its_orientation():
    rng = np.random.default_rng(5)
    d, n = 64, 80
    basis, _ = np.linalg.qr(rng.standard_normal((d, 2)))  # (D, 2) orthonormal: the plane the latents move in
    t = np.linspace(0, 1.5 * np.pi, n + 1)
    coords = np.stack([np.cos(t), 0.8 * np.sin(t)], 1)  # (n+1, 2): an arc in that plane, similar variances
    latents = (coords @ basis.T + 2.0).astype(np.float32)  # (n+1, D), offset: the projection must centre
    timeline = Timeline(window=n, stats_s=2.0, threshold=4.0)
    states = list(_states(latents))
    for s in states[:n]:
        timeline.observe(s, dropped=3)
    snap = timeline.snapshot(now=states[n - 1].t_done)
    traj = snap["trajectory"]
    xy = np.array(traj["xy"])  # (n, 2)
    assert traj["explained"] == pytest.approx(1.0, abs=1e-3)
    centred = coords[:n] - coords[:n].mean(0)
    # An orthonormal projection onto the true plane preserves every pairwise distance.
    dist = lambda a: np.linalg.norm(a[:, None] - a[None], axis=-1)  # noqa: E731
    np.testing.assert_allclose(dist(xy), dist(centred), atol=1e-3)
    # One state later the window slides by one; the axes must stay put (no flip, no swap, no spin).
    timeline.observe(states[n], dropped=3)
    xy2 = np.array(timeline.snapshot()["trajectory"]["xy"])  # (n, 2): states 1..n
    before, after = xy[1:], xy2[:-1]  # states 1..n-1 in both views; only the centre (window mean) moved
    np.testing.assert_allclose(after - after.mean(0), before - before.mean(0), atol=1e-3)

    # Statistics come from the states' own clocks: 10 states/s, 4 ms capture-to-state.
    assert snap["stats"]["fps"] == pytest.approx(10.0)
    assert snap["stats"]["p50_ms"] == pytest.approx(4.0, abs=1e-3)
    assert snap["drops"] == 3 and snap["states"] == n and snap["events"] == sum(i % 7 == 0 for i in range(n))
    assert [p[0] for p in timeline.snapshot(since=n - 3)["points"]] == [n - 2, n - 1, n]
    stalled = timeline.snapshot(now=states[n].t_done + 2.5)["stats"]  # nothing done in the last 2 s
    assert stalled == {"fps": 0.0, "p50_ms": None, "p99_ms": None}


# ------------------------------------------------------------------------------------------ headless Chromium
def _chromium():
    """A headless Chromium WebDriver, or a skip (a failure when AMI_EDGE_REQUIRE_BROWSER=1) saying what is missing."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if missing:
        why = f"the dashboard browser test needs {', '.join(missing)}: run `bash scripts/install-browser.sh`"
        if os.environ.get("AMI_EDGE_REQUIRE_BROWSER") == "1":
            pytest.fail(why + " (AMI_EDGE_REQUIRE_BROWSER=1)")
        pytest.skip(why)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,720", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


def _canvas_ink(driver, canvas_id: str) -> int:
    """How many pixels of a canvas were drawn on (alpha > 0), read back from the page."""
    return driver.execute_script(
        "const c = document.getElementById(arguments[0]);"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n;", canvas_id)


def test_dashboard_in_headless_chromium(video_bundle, tmp_path):
    driver = _chromium()
    try:
        with Serve(video_bundle, "--http-token", "s3cret") as serve:  # the page must pass its token on
            driver.set_page_load_timeout(30)
            driver.get(f"{serve.address}/?token=s3cret")
            body = driver.find_element("tag name", "body")
            count = lambda key: int(body.get_attribute(f"data-{key}"))  # noqa: E731
            first = _poll(lambda: count("surprise-points"), "the first surprise points drawn")
            _poll(lambda: count("surprise-points") > first, "the surprise plot to grow")
            _poll(lambda: count("previews") >= 2, "two preview images loaded")
            _poll(lambda: count("trajectory-points") >= 3, "the latent trajectory")
            # The page swaps in a new preview every 200 ms; between a swap and its arrival the <img> is incomplete.
            loaded = "const i = document.getElementById('preview'); return i.complete && i.naturalWidth === 128" \
                     " && i.naturalHeight === 128;"
            _poll(lambda: driver.execute_script(loaded), "a complete 128 x 128 preview image")
            ink = {c: _canvas_ink(driver, c) for c in ("surprise", "trajectory")}
            assert min(ink.values()) > 200, f"a canvas is (nearly) empty: {ink} pixels drawn"
            text = {k: driver.find_element("id", k).text for k in ("fps", "p50", "p99", "drops", "states")}
            assert float(text["fps"]) > 0, text
            assert re.fullmatch(r"\d+\.\d ms", text["p50"]) and re.fullmatch(r"\d+\.\d ms", text["p99"]), text
            assert text["drops"].isdigit() and int(text["states"]) > 0, text
            status = driver.find_element("id", "status").text
            assert status.startswith("live"), f"the page reports: {status}"

            shot = tmp_path / "dashboard.png"
            assert driver.save_screenshot(str(shot))
            image = cv2.imread(str(shot), cv2.IMREAD_COLOR)
            viewport = driver.execute_script("return [window.innerHeight, window.innerWidth];")
            assert image is not None and list(image.shape[:2]) == viewport, "screenshot is not a viewport PNG"
            assert image.std() > 10, "screenshot is blank"
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert not errors, errors
            assert serve.stop() == 0
            if os.environ.get("AMI_EDGE_SCREENSHOT"):  # keep a copy, e.g. for the README
                shutil.copy(shot, os.environ["AMI_EDGE_SCREENSHOT"])
    finally:
        driver.quit()
