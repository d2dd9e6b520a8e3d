"""The images the bench boots: the firmware as .mpy, and the MicroPython programs in tools/bench/programs/.

programs/ (real MicroPython files; host_tests/test_bench_quick.py compiles each with mpy-cross):
- esp32.py: the NVS shim every image uses in place of the board's (see SHIMS below);
- probe_main.py: main.py of OUT/probe, printing the modules each boot imports;
- floor_main.py: main.py of OUT/floor, the bare-MQTT floor any device pays;
- idle_main.py: main.py of OUT/idle, the interpreter and the ROM script alone;
- reconnect_main.py: main.py of OUT/reconnect, a board that stays online while the bench drops it.
"""
import shutil
from pathlib import Path

from tools.bench.common import FIRMWARE, SIM, UMQTT_SRC
from tools.factory.flash import mpy_cross  # compiled as `make deploy` stages it (mpy-cross -O3)

PROGRAMS = Path(__file__).resolve().parent / "programs"

# SHIMS: the board's shims (boards/sim/modules: esp32 NVS, network, machine, ...) stand in for C modules
# that cost the ESP32 no heap; loaded from source they would be compiled in the heap at every boot. Every
# image's boot.py puts their mpy-cross output first on sys.path, so all of them (firmware, floor,
# idle) pay the same, smaller, price for the simulation.
#
# esp32 is replaced as well. The board's NVS shim reads, parses and rewrites a whole partition image
# in Python (tens of KiB of heap, and time, that the ESP32 spends in C outside MicroPython's heap);
# measured with it, the bench would measure the simulator. programs/esp32.py keeps NVS values in a dict
# (loaded from and committed to a small JSON file the bench writes from the board's settings), with
# the C module's API and errors as dynreg uses them.
BOOT_PREFIX = '''\
import sys
sys.path.insert(0, %r)  # bench: the board's shims, precompiled
del sys
'''
MAINS = {"probe": "probe_main.py", "floor": "floor_main.py", "idle": "idle_main.py",
         "reconnect": "reconnect_main.py"}


def build(out):
    """OUT/fw (firmware as .mpy), OUT/probe (same lib, main.py that reports imports), OUT/floor, OUT/idle.

    umqtt.simple goes to the image's root, not lib/: the runner puts build/deps/<umqtt> (the board's
    frozen modules) ahead of lib/ on sys.path, but the firmware root ahead of both, so the .mpy is
    what gets imported (the flash probe checks).
    """
    if not UMQTT_SRC.exists():
        raise SystemExit("bench: %s missing (make setup fetches it)" % UMQTT_SRC)
    sizes = {}
    fw = out / "fw"
    shutil.rmtree(fw, ignore_errors=True)
    for src in sorted((FIRMWARE / "lib" / "dynreg").glob("*.py")):
        sizes["dynreg." + src.stem if src.stem != "__init__" else "dynreg"] = mpy_cross(
            src, fw / "lib" / "dynreg" / (src.stem + ".mpy"))
    sizes["umqtt.simple"] = mpy_cross(UMQTT_SRC, fw / "umqtt" / "simple.mpy")
    shims = out / "shims"
    shutil.rmtree(shims, ignore_errors=True)
    for src in sorted((SIM / "modules").glob("*.py")):
        mpy_cross(src, shims / (src.stem + ".mpy"))
    mpy_cross(PROGRAMS / "esp32.py", shims / "esp32.mpy")  # replaces the board's NVS shim, see SHIMS
    boot = BOOT_PREFIX % str(shims) + (FIRMWARE / "boot.py").read_text()
    shutil.copy(FIRMWARE / "main.py", fw / "main.py")
    (fw / "boot.py").write_text(boot)
    for name, main in MAINS.items():
        d = out / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        if name != "idle":
            shutil.copytree(fw / "umqtt", d / "umqtt")
        if name in ("probe", "reconnect"):
            shutil.copytree(fw / "lib", d / "lib")
        (d / "boot.py").write_text(boot)
        shutil.copy(PROGRAMS / main, d / "main.py")
    return sizes
