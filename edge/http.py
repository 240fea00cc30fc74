"""`serve --http HOST:PORT`: `/metrics` (Prometheus text format) and `/healthz` for the running runtime.

Localhost by default. Binding beyond localhost requires a token, sent as `Authorization: Bearer TOKEN` or
`?token=TOKEN`; without one the server refuses to start.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .errors import ConfigError


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


class HttpServer:
    def __init__(self, bind: str, metrics: Metrics, token: str | None = None, model: str = ""):
        host, port = parse_bind(bind)
        if not is_loopback(host) and not token:
            raise ConfigError(f"--http {bind} listens beyond localhost: pass --http-token (clients send "
                              "'Authorization: Bearer TOKEN')")
        self.metrics, self.token, self.model = metrics, token, model
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
                path = urlsplit(self.path).path
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
                else:
                    self._send(404, "text/plain", b"not found: /metrics, /healthz\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
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
