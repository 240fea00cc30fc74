"""A serial cable in software: two pseudo-terminals joined by a relay thread.

Run the host on `cable.host_path` and an MCU program (the C example, or a simulator) on `cable.mcu_path`; both are
real ttys, so pyserial and termios behave as with hardware. `unplug()` makes both ends see the device vanish.
Linux and macOS only (os.openpty).
"""

from __future__ import annotations

import os
import select
import threading
import tty


class PtyCable:
    def __init__(self) -> None:
        self.host_master, self.host_slave = os.openpty()
        self.mcu_master, self.mcu_slave = os.openpty()
        for fd in (self.host_slave, self.mcu_slave):
            tty.setraw(fd)  # raw before anyone writes: no byte meets a cooked line discipline
        self.host_path, self.mcu_path = os.ttyname(self.host_slave), os.ttyname(self.mcu_slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._relay, name="pty-cable", daemon=True)
        self._thread.start()

    def _relay(self) -> None:
        pairs = {self.host_master: self.mcu_master, self.mcu_master: self.host_master}
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select(list(pairs), [], [], 0.05)
                for fd in ready:
                    os.write(pairs[fd], os.read(fd, 4096))
            except OSError:
                return

    def unplug(self) -> None:
        """Stop relaying and close every end: both programs see their tty go away."""
        self._stop.set()
        self._thread.join(timeout=5)
        for fd in (self.host_master, self.mcu_master, self.host_slave, self.mcu_slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> PtyCable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unplug()
