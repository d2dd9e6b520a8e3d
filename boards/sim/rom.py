"""ROM of the simulated ESP32 board: what runs between power-on and main.py.

The runner (tools/sim, `python -m tools.sim`) starts one interpreter process per boot:
`micropython rom.py` (MicroPython unix port) or `python rom.py` (CPython).
This script, valid under both, then does what the ROM and MicroPython's
startup do on the board:

1. sys.path in the board's order: built-in modules first (boards/sim/modules:
   esp32 NVS, network WLAN, machine, ntptime, ussl; under CPython preceded by
   boards/sim/cpython, stand-ins for MicroPython's cryptolib, ssl, usocket, ...;
   followed by tools/factory, whose nvsformat.py is the NVS codec the esp32 shim
   and the factory tools share), then '' (the firmware directory, i.e. the board's / ), '.frozen' (MicroPython),
   the dependency directories (frozen into the real firmware), firmware/lib.
2. chdir to the firmware directory.
3. Run boot.py and, if it succeeded, main.py, in one shared globals dict
   {'__name__': '__main__'} as the board does. A missing file is skipped.

Exit codes: 0 when main.py returns (on the board: the REPL), 86 from
machine.reset() (the runner boots again; NVS kept, RAM gone), 1 after an
uncaught exception (traceback printed first).

Environment: DYNREG_SIM_FIRMWARE (firmware dir, default ./firmware),
DYNREG_SIM_PATH (os.pathsep-separated extra dirs, e.g. build/deps/frozen);
the shims read DYNREG_SIM_NVS, DYNREG_SIM_WIFI and DYNREG_SIM_MAC.
Under CPython a few MicroPython-only functions are added: time.sleep_ms,
sleep_us, ticks_ms, ticks_us, ticks_diff, ticks_add and sys.print_exception.
"""
import os
import sys

_CPYTHON = sys.implementation.name == "cpython"


def _absolute(path):
    return path if path.startswith("/") else os.getcwd() + "/" + path


def _here():
    path = _absolute(__file__)
    return path[: path.rfind("/")]


def _add_cpython_compat():
    """MicroPython functions firmware uses that CPython lacks."""
    import time
    import traceback

    def ticks_ms():
        return time.monotonic_ns() // 1000000

    def ticks_us():
        return time.monotonic_ns() // 1000

    time.ticks_ms = ticks_ms
    time.ticks_us = ticks_us
    time.ticks_diff = lambda new, old: new - old
    time.ticks_add = lambda ticks, delta: ticks + delta
    time.sleep_ms = lambda ms: time.sleep(ms / 1000)
    time.sleep_us = lambda us: time.sleep(us / 1000000)
    sys.print_exception = lambda exc, file=sys.stdout: traceback.print_exception(
        type(exc), exc, exc.__traceback__, file=file
    )


def _search_path(here, firmware):
    separator = getattr(os, "pathsep", ":")  # MicroPython's os has no pathsep
    extra = [p for p in (os.getenv("DYNREG_SIM_PATH") or "").split(separator) if p]
    repo = here[: here.rfind("/", 0, here.rfind("/"))]  # here is <repo>/boards/sim
    path = [here + "/modules", repo + "/tools/factory", ""]
    if _CPYTHON:
        path.insert(0, here + "/cpython")
    else:
        path.append(".frozen")
    return path + extra + [firmware + "/lib"]


def _run(name, env):
    """Run one firmware script; False if it raised (traceback printed)."""
    try:
        with open(name) as f:
            source = f.read()
    except OSError:
        return True  # no such script: nothing to run, like the board
    try:
        exec(compile(source, name, "exec"), env)
    except Exception as exc:  # SystemExit (machine.reset) passes through
        sys.print_exception(exc)
        return False
    return True


def main():
    here = _here()
    firmware = _absolute(os.getenv("DYNREG_SIM_FIRMWARE") or "firmware")
    if _CPYTHON:
        _add_cpython_compat()
        # keep the stdlib and site-packages, drop this script's directory
        real_here = os.path.realpath(here)
        host_path = [p for p in sys.path if os.path.realpath(p) != real_here]
    else:
        host_path = []
    sys.path[:] = _search_path(here, firmware) + host_path
    import simfault

    if simfault.get("clock"):  # an unset clock (simclock.py) behind time.time()
        if _CPYTHON:
            import time

            import simclock

            host_time = time.time
            time.time = lambda: simclock.now(host_time())
        else:
            sys.path.insert(0, here + "/clock")
    os.chdir(firmware)
    env = {"__name__": "__main__"}
    if _run("boot.py", env) and _run("main.py", env):
        sys.exit(0)
    sys.exit(1)


main()
