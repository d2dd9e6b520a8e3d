"""Simulated machine module: reset() and unique_id() of the simulated ESP32.

Runs under MicroPython (unix port) and CPython. reset() ends the interpreter
process with exit code RESET_EXIT; the runner (tools/sim) then boots a
fresh process: RAM is gone, the NVS file is kept.
"""
import binascii
import os
import sys

RESET_EXIT = 86
_DEFAULT_MAC = "240ac4123456"


def unique_id():
    """The base MAC address (6 bytes), from DYNREG_SIM_MAC (12 hex digits)."""
    return binascii.unhexlify(os.getenv("DYNREG_SIM_MAC") or _DEFAULT_MAC)


def reset():
    """Hard reset: uncommitted NVS writes and all RAM state are lost."""
    # sys.exit (not os._exit) so buffered stdout reaches the runner
    sys.exit(RESET_EXIT)
