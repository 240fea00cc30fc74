"""`serve --http HOST:PORT`: the web dashboard, `/metrics` (Prometheus text format) and `/healthz`.

    /                   the dashboard: one static page (edge/dashboard/index.html, vanilla JS + canvas) polling:
    /api/state?since=N  JSON: states after seq N (surprise, events), fps / latency p50 p99 / drops over the last
                        seconds, and the latent trajectory projected to 2-D
    /preview.jpg?w=128  the newest camera frame, downscaled and JPEG-encoded when asked for (never per frame)
    /metrics, /healthz  Prometheus scrape and liveness

Localhost by default. Binding beyond localhost requires a token, sent as `Authorization: Bearer TOKEN` or
`?token=TOKEN` (the page reads it from its own URL and passes it on); without one the server refuses to start.
Every path, the page included, needs the token when one is set.

The serve loop pays one `Timeline.observe` per state (a tuple appended to a bounded deque under an uncontended lock)
and one reference swap per frame in `FrameTap`; all statistics, the projection and the JPEG are computed in the HTTP
thread of the request that needs them.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import math
import threading
import time
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .errors import ConfigError
from .sources import Frame, Source

PAGE = "dashboard/index.html"  # package data of ami_edge


class Metrics:
    """The runtime's counters and gauges in their own registry (no process-global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.states = Counter("ami_edge_states", "States produced", registry=self.registry)
        self.events = Counter("ami_edge_events", "Surprise events", registry=self.registry)
        self.drops = Gauge("ami_edge_dropped_frames", "Frames skipped by latest-frame capture", registry=self.registry)
        self.surprise = Gauge("ami_edge_surprise", "Last z-scored surprise", registry=self.registry)
        self.latency = Histogram("ami_edge_capture_to_state_seconds", "Capture to state latency",
                                 buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
                                 registry=self.registry)
        self.last_state = 0.0

    def watch_link(self, name: str, counters) -> None:
        """Export a serial link's counters (read at scrape time) as ami_edge_serial_* gauges labelled by port."""
        self.registry.register(_LinkCollector(name, counters))

    def observe(self, state, dropped: int) -> None:
        self.states.inc()
        self.events.inc(int(state.event))
        self.drops.set(dropped)
        if state.surprise is not None:
            self.surprise.set(state.surprise)
        self.latency.observe(max(0.0, state.t_done - state.t_capture))
        self.last_state = time.monotonic()


class FrameTap(Source):
    """Wraps the runtime's source and keeps a reference to the newest frame for `/preview.jpg`.

    Per frame this costs one attribute store: the frame's image is neither copied nor encoded here. Everything else
    (close, describe, `act`, `dropped`, ...) is the wrapped source's.
    """

    def __init__(self, source: Source):
        self.source, self.uri, self.live = source, source.uri, source.live
        self.latest: Frame | None = None

    def __iter__(self) -> Iterator[Frame]:
        for frame in self.source:
            self.latest = frame
            yield frame

    def close(self) -> None:
        self.source.close()

    def describe(self) -> str:
        return self.source.describe()

    def __getattr__(self, name: str):  # only called for attributes FrameTap itself lacks
        return getattr(self.source, name)


class Timeline:
    """The last `size` states, kept for the dashboard, and what the dashboard asks of them.

    `observe` runs in the serve loop and only appends a small tuple (the state's latent is referenced, not copied:
    the runtime allocates a fresh one per state). Statistics and the 2-D projection are computed per request.

    The projection is PCA over the latents of the last `window` states: the plane of the top two principal
    components, found by subspace iteration warm-started from the previous request's basis (two (W, D) x (D, 2)
    products per request instead of a full SVD; the iteration carries on across polls as the window slides), then
    rotated within that plane (orthogonal Procrustes) to stay as close as possible to the previous axes, so the live
    picture neither flips nor spins when the two top variances are close. A fixed random projection would be
    steadier still, but shows mostly noise for D in the hundreds.

    The products use np.einsum (contracting contiguous axes), which never calls BLAS: OpenBLAS would spread these
    skinny products over every core, next to the model's own inference threads (measured on a loaded 2-core
    machine: 16 ms for one (300, 1024) x (1024, 2) product with OpenBLAS threads, 0.4 ms with einsum). A request
    with no new state reuses the last projection.
    """

    def __init__(self, size: int = 600, window: int = 300, stats_s: float = 2.0, threshold: float | None = None):
        # (seq, t_done, capture-to-state seconds, surprise | None, event, latent (D,))
        self._states: deque[tuple[int, float, float, float | None, bool, np.ndarray]] = deque(maxlen=size)
        self._lock = threading.Lock()
        self.window, self.stats_s, self.threshold = window, stats_s, threshold
        self.total = self.events = self.dropped = 0
        self.tap: FrameTap | None = None
        self._basis: np.ndarray | None = None  # (2, D): the previous projection axes, one per row
        self._basis_lock = threading.Lock()
        self._projected: tuple[int, dict] | None = None  # (last seq, trajectory) of the last request

    def observe(self, state, dropped: int) -> None:
        """Called by the serve loop for every state: O(1), no copies."""
        row = (state.seq, state.t_done, state.t_done - state.t_capture, state.surprise, state.event, state.latent)
        with self._lock:
            self._states.append(row)
            self.total += 1
            self.events += state.event
            self.dropped = dropped

    def snapshot(self, since: int = -1, now: float | None = None) -> dict:
        """The JSON the page polls: states after `since`, statistics of the states done in the `stats_s` seconds
        before `now` (default: `time.monotonic()`, the clock of `State.t_done`) and the projected trajectory."""
        with self._lock:
            rows = list(self._states)
            total, events, dropped = self.total, self.events, self.dropped
        points = [[seq, round(s, 4) if s is not None and math.isfinite(s) else None, int(e)]  # JSON has no NaN
                  for seq, _, _, s, e, _ in rows if seq > since]
        return {"seq": rows[-1][0] if rows else None, "states": total, "events": events, "drops": dropped,
                "threshold": self.threshold, "points": points, "stats": self._stats(rows, time.monotonic() if now is None else now),
                "trajectory": self._trajectory(rows[-self.window:])}

    def _stats(self, rows: list, now: float) -> dict:
        """fps and capture-to-state latency p50 / p99 over the states of the last `stats_s` seconds. A stalled
        stream shows fps 0 and no latency, not its last good numbers."""
        if not rows:
            return {"fps": None, "p50_ms": None, "p99_ms": None}
        t_done = np.array([r[1] for r in rows])  # (n,)
        recent = t_done >= now - self.stats_s
        if recent.sum() < 2:
            return {"fps": 0.0, "p50_ms": None, "p99_ms": None}
        latency = np.array([r[2] for r in rows])[recent] * 1e3  # (m,) ms
        span = t_done[recent][-1] - t_done[recent][0]
        fps = (int(recent.sum()) - 1) / span if span > 0 else None
        p50, p99 = np.percentile(latency, [50, 99])
        return {"fps": None if fps is None else round(fps, 2), "p50_ms": round(float(p50), 3),
                "p99_ms": round(float(p99), 3)}

    def _trajectory(self, rows: list) -> dict:
        """The window's latents projected onto their top-2 principal plane (see the class docstring)."""
        if len(rows) < 3:
            return {"xy": [], "seq": [], "event": [], "explained": None}
        with self._basis_lock:
            if self._projected is not None and self._projected[0] == rows[-1][0]:
                return self._projected[1]
            latents = np.stack([r[5] for r in rows])  # (W, D)
            x = latents - latents.mean(0, dtype=np.float64)  # (W, D) float64
            prev = self._basis if self._basis is not None and self._basis.shape[1] == x.shape[1] else None
            axes = prev if prev is not None else np.random.default_rng(0).standard_normal((2, x.shape[1]))  # (2, D)
            for _ in range(2 if prev is not None else 12):  # subspace iteration on the covariance x^T x
                z = np.einsum("wk,wd->kd", np.einsum("wd,kd->wk", x, axes), x)  # (2, D) = (x a^T)^T x
                axes = np.ascontiguousarray(np.linalg.qr(z.T)[0].T)  # (2, D), orthonormal rows
            if prev is not None:  # Procrustes: the rotation of the new plane's axes closest to the old axes
                u, _, vt = np.linalg.svd(axes @ prev.T)  # (2, 2)
                axes = (u @ vt).T @ axes
            self._basis = axes
            xy = np.einsum("wd,kd->wk", x, axes)  # (W, 2)
            if not np.isfinite(xy).all():  # a non-finite latent: nothing to draw, and the next poll starts afresh
                self._basis = None
                return {"xy": [], "seq": [], "event": [], "explained": None}
            total = float(np.einsum("wd,wd->", x, x))
            explained = float((xy * xy).sum()) / total if total > 0 else None
            result = {"xy": np.round(xy, 4).tolist(), "seq": [r[0] for r in rows], "event": [int(r[4]) for r in rows],
                      "explained": None if explained is None else round(explained, 4)}
            self._projected = (rows[-1][0], result)
            return result

    def preview(self, width: int = 128, quality: int = 80) -> bytes | None:
        """The newest frame, resized to `width` pixels wide and JPEG-encoded; None before the first frame."""
        frame = self.tap.latest if self.tap is not None else None
        if frame is None:
            return None
        image = frame.image  # (H, W, 3) uint8 RGB
        height = max(1, round(image.shape[0] * width / image.shape[1]))
        small = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        return jpeg.tobytes() if ok else None


class _LinkCollector:
    def __init__(self, name: str, counters):
        self.name, self.counters = name, counters

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        for key, value in self.counters().items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                value = float(value) if isinstance(value, bool) else None
            if value is None:
                continue
            family = GaugeMetricFamily(f"ami_edge_serial_{key}", f"serial link {key}", labels=["port"])
            family.add_metric([self.name], float(value))
            yield family


def parse_bind(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise ConfigError(f"--http {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080") from None


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _page() -> bytes:
    from importlib.resources import files

    try:
        return (files("ami_edge") / PAGE).read_bytes()
    except OSError as exc:
        raise ConfigError(f"the dashboard page ami_edge/{PAGE} is missing from this install ({exc}); "
                          "reinstall ami-edge") from exc


def _int_arg(query: dict[str, list[str]], key: str, default: int, lo: int, hi: int) -> int:
    try:
        return min(hi, max(lo, int(query.get(key, [default])[0])))
    except ValueError:
        return default


class HttpServer:
    def __init__(self, bind: str, metrics: Metrics, token: str | None = None, model: str = "",
                 timeline: Timeline | None = None):
        host, port = parse_bind(bind)
        if not is_loopback(host) and not token:
            raise ConfigError(f"--http {bind} listens beyond localhost: pass --http-token (clients send "
                              "'Authorization: Bearer TOKEN')")
        self.metrics, self.token, self.model, self.timeline = metrics, token, model, timeline
        page = _page() if timeline is not None else b""
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet: serve prints its own status lines
                pass

            def _authorized(self) -> bool:
                if not server.token:
                    return True
                given = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
                given = given or (parse_qs(urlsplit(self.path).query).get("token") or [""])[0]
                return hmac.compare_digest(given, server.token)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                path, query = url.path, parse_qs(url.query)
                timeline = server.timeline
                if not self._authorized():
                    self._send(401, "text/plain", b"missing or wrong token\n")
                elif path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(server.metrics.registry))
                elif path == "/healthz":
                    age = time.monotonic() - server.metrics.last_state if server.metrics.last_state else None
                    ok = age is not None and age < 5.0
                    body = {"status": "ok" if ok else "starting" if age is None else "stalled", "model": server.model,
                            "last_state_age_s": None if age is None else round(age, 3)}
                    self._send(200 if ok else 503, "application/json", json.dumps(body).encode())
                elif timeline is not None and path in ("/", "/index.html"):
                    self._send(200, "text/html; charset=utf-8", page)
                elif timeline is not None and path == "/api/state":
                    body = timeline.snapshot(since=_int_arg(query, "since", -1, -1, 2**62))
                    body["model"] = server.model
                    self._send(200, "application/json", json.dumps(body).encode())
                elif timeline is not None and path == "/preview.jpg":
                    jpeg = timeline.preview(width=_int_arg(query, "w", 128, 16, 640))
                    if jpeg is None:
                        self._send(503, "text/plain", b"no frame yet\n")
                    else:
                        self._send(200, "image/jpeg", jpeg)
                else:
                    self._send(404, "text/plain", b"not found: /, /api/state, /preview.jpg, /metrics, /healthz\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise ConfigError(f"--http {bind}: cannot listen ({exc.strerror or exc})") from exc
        self.httpd.daemon_threads = True
        self.address = f"http://{host}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="ami-edge http", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
