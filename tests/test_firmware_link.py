"""SerialLink against the compiled C example MCU, over real pseudo-terminals joined by a relay ("the cable").

The host opens a by-id style symlink, as on a device; unplug closes the cable (both ends see the tty go away),
replug makes a new pair and re-points the link, as re-enumeration does.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ami_edge.firmware_bridge import Action, Surprise
from ami_edge.firmware_bridge.link import LinkError, SerialLink, resolve_port
from ami_edge.firmware_bridge.loopback import PtyCable

from .test_firmware_c import C_DIR, _build

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        threading.Event().wait(0.02)  # poll with a deadline; not a sleep that assumes timing
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def mcu_exe(tmp_path):
    return _build(tmp_path, "mcu", [C_DIR / "ami_bridge.c", C_DIR / "example" / "main.c"])


def test_link_talks_to_the_c_mcu_and_survives_unplug_and_hang(tmp_path, mcu_exe):
    by_id = tmp_path / "usb-ami_mcu-if00"
    cable = PtyCable()
    by_id.symlink_to(cable.host_path)
    mcu = subprocess.Popen([str(mcu_exe), cable.mcu_path])
    actions: list[Action] = []
    link = SerialLink(str(by_id), baud=921600, peer_heartbeat_s=0.1,
                      on_message=lambda m, f: actions.append(m) if isinstance(m, Action) else None)
    procs = [mcu]
    try:
        link.start()
        assert link.wait_up(10), "no HELLO from the MCU"
        assert link.stats.peer["capabilities"] == 1 and link.stats.connects == 1
        assert link.send(Surprise(1, 4.0, 3.0, 1))
        wait_for(lambda: actions, what="an ACTION answering the SURPRISE")
        assert round(float(actions[0].values[0]), 3) == 0.2 and float(actions[0].values[1]) == 4.0

        # a hung MCU: its heartbeats stop, the link goes down, and comes back when it resumes
        mcu.send_signal(signal.SIGSTOP)
        wait_for(lambda: not link.up, what="the link to notice 3 missed heartbeats")
        assert link.stats.heartbeat_timeouts == 1
        mcu.send_signal(signal.SIGCONT)
        wait_for(lambda: link.up, what="the link to come back after the MCU resumed")

        # unplug: the cable goes away, then a new one (new tty, as after re-enumeration) behind the same by-id name
        cable.unplug()
        wait_for(lambda: not link.up, what="the link to notice the unplug")
        assert not link.send(Surprise(2, 0.0, 3.0, 0))  # dropped and counted while down
        mcu.wait(timeout=10)
        cable = PtyCable()
        by_id.unlink()
        by_id.symlink_to(cable.host_path)
        mcu = subprocess.Popen([str(mcu_exe), cable.mcu_path])
        procs.append(mcu)
        wait_for(lambda: link.up, what="reconnect and HELLO after replug")
        actions.clear()
        assert link.send(Surprise(3, 0.5, 3.0, 0))
        wait_for(lambda: actions, what="an ACTION after the reconnect")
        counters = link.counters()
        assert counters["connects"] == 3 and counters["disconnects"] == 2 and counters["tx_dropped"] >= 1
        assert counters["rx_crc_errors"] == 0
    finally:
        link.close()
        cable.unplug()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
            p.wait(timeout=10)


def test_port_resolution_errors(tmp_path):
    with pytest.raises(LinkError, match="does not exist"):
        resolve_port(str(tmp_path / "ttyACM9"))
    with pytest.raises(Exception, match="usb:VID:PID"):
        resolve_port("usb:2e8a")
    with pytest.raises(Exception, match="hex"):
        resolve_port("usb:zz:01")
    with pytest.raises(LinkError, match="no USB serial device usb:dead:beef"):
        resolve_port("usb:dead:beef")
    assert resolve_port(os.devnull) == os.path.realpath(os.devnull)
