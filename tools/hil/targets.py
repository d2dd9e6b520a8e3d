"""Where `make hil` puts the firmware and reads the console: a board on a serial port, or the sim.

A target has install(image, force) (step 5: the NVS image and the firmware files go on the board,
an identity already there is kept unless force) and lines(deadline) (step 6: boots the board and
yields its console lines as they come, until it stops or time.monotonic() passes deadline).
"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tools.factory import flash  # noqa: E402

BAUD = 115200  # MicroPython's REPL on the ESP32's UART0 / USB
INTERRUPT_AND_SOFT_RESET = b"\r\x03\x03\x04"  # Ctrl-C twice (stop main.py), Ctrl-D at the REPL: boot again


class HilError(Exception):
    """A step failed; the message says why (never a secret)."""


class SerialBoard:
    """A real board: tools/factory/flash.py flashes it, its serial console is read with pyserial (mpremote's)."""

    def __init__(self, board, port, partition="default", firmware=None):
        self.board, self.port, self.partition, self.firmware = board, port, partition, firmware
        self.name = "%s on %s" % (board, port)

    def install(self, image, force):
        command = [sys.executable, str(REPO / "tools" / "factory" / "flash.py"), "flash", "--board", self.board, "--partition",
                   self.partition, "--port", self.port, "--nvs", str(image)]
        command += (["--firmware", self.firmware] if self.firmware else []) + (["--force"] if force else [])
        print("hil: " + " ".join(command[1:]), flush=True)
        code = subprocess.run(command, cwd=REPO).returncode
        if code:
            raise HilError("tools/factory/flash.py exited with %d (its messages are above)" % code)

    def lines(self, deadline):
        import serial  # pyserial, installed with mpremote

        link, pending, reset = None, b"", False
        while time.monotonic() < deadline:
            if link is None:
                try:
                    link = serial.Serial(self.port, BAUD, timeout=0.2)
                except serial.SerialException:
                    time.sleep(0.5)  # a board with native USB re-enumerates after machine.reset()
                    continue
                if not reset:
                    link.write(INTERRUPT_AND_SOFT_RESET)  # once: the boot starts with us listening
                    reset = True
            try:
                pending += link.read(256)
            except serial.SerialException:
                link.close()
                link = None
                continue
            *done, pending = pending.split(b"\n")
            for raw in done:
                line = raw.decode("utf-8", "replace").rstrip("\r")
                if line:
                    yield line
        if link is not None:
            link.close()


class SimBoard:
    """The simulated board (python -m tools.sim), its state directory playing the board's flash."""

    def __init__(self, state, cloud_state, settings, interp="micropython"):
        self.state, self.cloud_state, self.settings, self.interp = Path(state), cloud_state, settings, interp
        self.name = "the simulated board (%s)" % interp
        self.image = None

    def install(self, image, force):
        nvs = self.state / "nvs.bin"
        chosen, notes = flash.choose(nvs if nvs.exists() else None, image, force, archive=False)
        for note in notes:
            print("hil: " + note.replace(str(nvs), "the board's NVS"), flush=True)
        self.image = None if chosen == nvs else chosen  # None: boot with the NVS it has

    def lines(self, deadline):
        command = [sys.executable, "-m", "tools.sim", "--settings", str(self.settings), "--state",
                   str(self.state), "--cloud-state", str(self.cloud_state), "--interp", self.interp,
                   "--max-boots", "4", "--boot-timeout", "0"]
        command += ["--nvs", str(self.image)] if self.image else []
        # its own process group: the deadline powers off the runner and the boot it runs together
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        power = threading.Timer(max(0, deadline - time.monotonic()), _power_off, (proc,))
        power.start()
        try:
            for line in proc.stdout:
                yield line.rstrip("\n")
        finally:
            power.cancel()
            _power_off(proc)
            proc.wait()


def _power_off(proc):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
