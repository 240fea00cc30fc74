"""A serial link to a microcontroller over pyserial: open, HELLO, heartbeats, liveness, reconnect.

    link = SerialLink("usb:2e8a:000a", baud=921600, on_message=handle)   # or a path / by-id link
    link.start(); link.send(Surprise(step, value, threshold, event)); ...; link.close()

- The port is resolved at every (re)connect: a path (a /dev/serial/by-id link survives re-enumeration), or
  `usb:VID:PID[:SERIAL]` matched against the USB ports present.
- DTR and RTS are set *before* opening, so boards that reset on DTR (Arduino-style) keep running (pyserial #124),
  and the port is opened exclusively.
- After HELLO the link is up. It goes down when the port fails (unplug) or when `missed_heartbeats` of the peer's
  heartbeats do not arrive; then it closes the port and reconnects with backoff, sending HELLO again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ami_edge.errors import AmiEdgeError, ConfigError

from .codec import DEFAULT_MAX_PAYLOAD, Frame, FrameDecoder, encode_frame
from .messages import Heartbeat, Hello, Message, decode_message

log = logging.getLogger("ami_edge.firmware_bridge")


class LinkError(AmiEdgeError, ConnectionError):
    """The serial port cannot be found or opened."""


@dataclass
class LinkStats:
    up: bool = False
    connects: int = 0
    disconnects: int = 0
    tx_frames: int = 0
    tx_dropped: int = 0  # sends while the link was down
    rx_frames: int = 0
    heartbeat_timeouts: int = 0
    peer: dict = field(default_factory=dict)  # the peer's HELLO

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def resolve_port(spec: str) -> str:
    """A device path for `spec`: a path (symlinks followed), or `usb:VID:PID[:SERIAL]` among present USB ports."""
    if not spec.startswith("usb:"):
        path = Path(spec)
        if not path.exists():
            raise LinkError(f"serial port {spec} does not exist (unplugged? check /dev/serial/by-id/)")
        return str(path.resolve())
    parts = spec[4:].split(":")
    if len(parts) not in (2, 3):
        raise ConfigError(f"serial port '{spec}' must be usb:VID:PID or usb:VID:PID:SERIAL (hex ids)")
    try:
        vid, pid = int(parts[0], 16), int(parts[1], 16)
    except ValueError:
        raise ConfigError(f"serial port '{spec}': VID and PID must be hex, e.g. usb:2e8a:000a") from None
    serial_number = parts[2] if len(parts) == 3 else None
    from serial.tools import list_ports

    matches = [p for p in list_ports.comports() if p.vid == vid and p.pid == pid
               and (serial_number is None or p.serial_number == serial_number)]
    if not matches:
        raise LinkError(f"no USB serial device {spec} is connected")
    if len(matches) > 1:
        raise LinkError(f"several devices match {spec} ({', '.join(p.device for p in matches)}); add :SERIAL")
    return matches[0].device


class SerialLink:
    """A supervised connection to one MCU. Thread-safe `send`; received messages go to `on_message`."""

    def __init__(self, port: str, baud: int = 921600, *,
                 on_message: Callable[[Message | None, Frame], None] | None = None, heartbeat_s: float = 0.5,
                 peer_heartbeat_s: float = 0.1, missed_heartbeats: int = 3, max_payload: int = DEFAULT_MAX_PAYLOAD,
                 backoff: tuple[float, float] = (0.05, 2.0)):
        if baud <= 0 or heartbeat_s <= 0 or peer_heartbeat_s <= 0 or missed_heartbeats < 1:
            raise ConfigError("SerialLink: baud, heartbeat periods and missed_heartbeats must be positive")
        self.port_spec, self.baud = port, baud
        self.on_message = on_message
        self.heartbeat_s, self.peer_heartbeat_s, self.missed = heartbeat_s, peer_heartbeat_s, missed_heartbeats
        self.max_payload, self.backoff = max_payload, backoff
        self.stats = LinkStats()
        self.decoder = FrameDecoder(max_payload=max_payload)
        self._serial = None
        self._seq = 0
        self._tx_lock = threading.Lock()
        self._stop = threading.Event()
        self._up = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = time.monotonic()
        self._last_peer = 0.0

    # ------------------------------------------------------------------------------------------ public
    def start(self) -> SerialLink:
        self._thread = threading.Thread(target=self._run, name=f"serial-link {self.port_spec}", daemon=True)
        self._thread.start()
        return self

    def wait_up(self, timeout: float) -> bool:
        return self._up.wait(timeout)

    @property
    def up(self) -> bool:
        return self._up.is_set()

    def send(self, msg: Message, flags: int = 0) -> bool:
        """Send a message; False (and counted) while the link is down."""
        with self._tx_lock:
            ser = self._serial
            if ser is None or not self._up.is_set() and not isinstance(msg, Hello):
                self.stats.tx_dropped += 1
                return False
            frame = msg.frame(seq=self._seq, t_us=self._micros(), flags=flags)
            self._seq = (self._seq + 1) % 256
            try:
                ser.write(encode_frame(frame))
            except Exception:  # pyserial raises SerialException / OSError on unplug
                self.stats.tx_dropped += 1
                return False
            self.stats.tx_frames += 1
            return True

    def counters(self) -> dict:
        """Link and decoder counters, for the runtime's metrics."""
        return {**self.stats.as_dict(), **{f"rx_{k}": v for k, v in self.decoder.stats.as_dict().items()}}

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._disconnect()

    def __enter__(self) -> SerialLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------- internals
    def _micros(self) -> int:
        return int((time.monotonic() - self._start) * 1e6) & 0xFFFFFFFF

    def _open(self):
        import serial

        ser = serial.Serial()
        ser.port = resolve_port(self.port_spec)
        ser.baudrate = self.baud
        ser.timeout = min(0.05, self.peer_heartbeat_s / 2)
        ser.write_timeout = 1.0
        ser.dtr = False  # set before open: boards that reset on DTR keep running
        ser.rts = False
        ser.exclusive = True
        ser.open()
        return ser

    def _disconnect(self) -> None:
        with self._tx_lock:
            ser, self._serial = self._serial, None
        if self._up.is_set():
            self._up.clear()
            self.stats.up = False
            self.stats.disconnects += 1
        if ser is not None:
            try:
                ser.close()
            except Exception:  # closing a vanished device may fail; it is gone either way
                pass

    def _run(self) -> None:
        delay = self.backoff[0]
        while not self._stop.is_set():
            try:
                ser = self._open()
            except Exception as exc:  # not there yet (unplugged, re-enumerating) or busy
                log.debug("serial open %s failed: %s", self.port_spec, exc)
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff[1])
                continue
            delay = self.backoff[0]
            with self._tx_lock:
                self._serial = ser
            self.decoder = FrameDecoder(max_payload=self.max_payload)
            self._session(ser)
            self._disconnect()

    def _session(self, ser) -> None:
        """One connection: HELLO until the peer answers, then read, heartbeat and watch the peer's heartbeats."""
        hello_due = next_beat = 0.0
        self._last_peer = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if not self._up.is_set() and now >= hello_due:
                self.send(Hello(max_payload=self.max_payload))
                hello_due = now + max(self.peer_heartbeat_s, 0.05) * 2
            if self._up.is_set() and now >= next_beat:
                self.send(Heartbeat(uptime_ms=int((now - self._start) * 1000) & 0xFFFFFFFF, state=1,
                                    crc_errors=self.decoder.stats.crc_errors, seq_gaps=self.decoder.stats.seq_gaps))
                next_beat = now + self.heartbeat_s
            if self._up.is_set() and now - self._last_peer > self.missed * self.peer_heartbeat_s:
                self.stats.heartbeat_timeouts += 1
                log.warning("serial link %s: %d heartbeats missed, reconnecting", self.port_spec, self.missed)
                return
            try:
                data = ser.read(max(1, ser.in_waiting))
            except Exception as exc:  # unplugged: SerialException / OSError (EIO)
                log.warning("serial link %s lost: %s", self.port_spec, exc)
                return
            for frame in self.decoder.feed(data):
                self._handle(frame)

    def _handle(self, frame: Frame) -> None:
        self.stats.rx_frames += 1
        msg = decode_message(frame)
        if isinstance(msg, (Hello, Heartbeat)):
            self._last_peer = time.monotonic()
        if isinstance(msg, Hello):
            self.stats.peer = {"version": msg.version, "schema_hash": msg.schema_hash,
                               "max_payload": msg.max_payload, "capabilities": msg.capabilities}
            if not self._up.is_set():
                self.stats.connects += 1
                self.stats.up = True
                self._up.set()
        if self.on_message is not None:
            self.on_message(msg, frame)
