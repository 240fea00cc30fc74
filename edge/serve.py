"""`ami-edge serve`: run a bundle on a source, log a status line each second, stop cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

import numpy as np

from .config import ServeConfig, merge
from .control import ControlServer
from .http import FrameTap, HttpServer, Metrics, Timeline
from .publishers import open_publisher
from .runtime import Runtime
from .sources import LatestFrame


def run(args: argparse.Namespace) -> int:
    cfg = merge(ServeConfig.load(args.config) if args.config else ServeConfig(),
                {"model": args.model, "source": args.source, "backend": args.backend, "publish": args.publish,
                 "threshold": args.threshold, "max_frames": args.max_frames, "http": args.http,
                 "http_token": args.http_token, "control": args.control, "control_token": args.control_token,
                 "camera": args.camera, "surprise_calibration": args.surprise_calibration})
    rt = Runtime(model=cfg.model, source=cfg.source, backend=cfg.backend, threshold=cfg.threshold, camera=cfg.camera,
                 surprise_calibration=cfg.surprise_calibration)
    publishers, http, control, metrics = [], None, None, Metrics()
    capture = rt.source if isinstance(rt.source, LatestFrame) else None  # counts the frames a live source dropped
    timeline = Timeline(threshold=rt.baseline.threshold) if cfg.http else None  # the dashboard's recent states
    try:
        for uri in cfg.publish:
            publishers.append(open_publisher(uri, rt))
        for p in publishers:
            link = getattr(p, "link", None)  # serial publishers: their link counters go to /metrics
            if link is not None:
                metrics.watch_link(link.port_spec, link.counters)
        if cfg.http:
            http = HttpServer(cfg.http, metrics, cfg.http_token, model=rt.bundle.manifest.name, timeline=timeline)
            rt.source = timeline.tap = FrameTap(rt.source)  # the newest frame, for /preview.jpg
        if cfg.control:
            control = ControlServer(cfg.control, rt, cfg.control_token)
    except BaseException:
        for p in publishers:
            p.close()
        if http is not None:
            http.close()
        rt.close()
        raise
    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        stop.set()
        rt.source.close()  # unblocks a source waiting for its next frame

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    log = sys.stderr
    print(f"ami-edge serve: {rt.describe()}", file=log, flush=True)
    if rt.calibration is not None:
        print(f"ami-edge serve: {rt.calibration.describe()}"
              + (f"; threshold {cfg.threshold:g} given, it wins" if cfg.threshold is not None else ""), file=log,
              flush=True)
    for p in publishers:
        print(f"ami-edge serve: publishing to {p.describe()}", file=log, flush=True)
    if http is not None:
        token_hint = " (add ?token=TOKEN)" if cfg.http_token else ""
        print(f"ami-edge serve: dashboard at {http.address}/{token_hint}, metrics at {http.address}/metrics, "
              f"health at {http.address}/healthz", file=log, flush=True)
    if control is not None:
        print(f"ami-edge serve: control channel at {control.endpoint}", file=log, flush=True)
    window_start, latencies, events, total, last = time.monotonic(), [], 0, 0, None
    try:
        for state in rt.stream(max_frames=cfg.max_frames):
            for p in publishers:
                p.publish(state)
            dropped = capture.dropped if capture is not None else 0
            metrics.observe(state, dropped)
            if timeline is not None:
                timeline.observe(state, dropped)
            total += 1
            latencies.append(state.t_done - state.t_capture)
            events += state.event
            last = state
            now = time.monotonic()
            if now - window_start >= 1.0:
                lat = np.array(latencies) * 1e3
                surprise = "warming up" if state.surprise is None else f"{state.surprise:+.2f}"
                print(f"fps {len(latencies) / (now - window_start):6.1f}  latency p50 {np.percentile(lat, 50):6.1f} "
                      f"ms p99 {np.percentile(lat, 99):6.1f} ms  drops {dropped}  surprise {surprise}  "
                      f"events {events}", file=log, flush=True)
                window_start, latencies = now, []
            if stop.is_set():
                break
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for p in publishers:
            p.close()
        if http is not None:
            http.close()
        if control is not None:
            control.close()
        rt.close()
    why = "signal" if stop.is_set() else "end of source" if cfg.max_frames is None or total < cfg.max_frames \
        else f"{cfg.max_frames} states"
    print(f"ami-edge serve: stopped ({why}) after {total} states"
          + (f", last seq {last.seq}" if last is not None else ""), file=log, flush=True)
    return 0
