"""Fault injection for the simulated board's hardware stand-ins (not part of any real board).

The runner (tools/sim, --fault SPEC) sets DYNREG_SIM_FAULT for ONE boot; later boots are
clean. SPEC is a comma-separated list of:

  nvs_write:N     power lost at the N-th NVS set_i32/set_blob of this boot: the writes before it
                  are durable at once (as on ESP-IDF, where nvs_set_* writes flash immediately),
                  the N-th never happens, the board dies on the spot
  nvs_commit:N    power lost right after the N-th NVS commit() completed (before anything else)
  wifi:fail[:K]   no access point in range for the first K joins of this boot (default: all)
  wifi:timeout[:K] association never completes for the first K joins (default: all)
  ntp:fail[:K]    NTP query times out (OSError 110) for the first K queries (default: all)
  clock:unset     the clock reads 2000-01-01 at boot until NTP sets it (simclock.py)

A power cut ends the process with POWER_CUT_EXIT (87), at once: os._exit under CPython (no
finally blocks, no buffers flushed beyond what was printed), SystemExit under MicroPython (its
unix port has no _exit; the firmware lets SystemExit through as it does for machine.reset()).
The runner then boots again, like a board whose power returns.
"""
import os
import sys

POWER_CUT_EXIT = 87

_faults = None
_counts = {}


def _load():
    global _faults
    if _faults is None:
        _faults = {}
        for item in (os.getenv("DYNREG_SIM_FAULT") or "").split(","):
            item = item.strip()
            if not item:
                continue
            parts = item.split(":")
            if len(parts) < 2:
                raise ValueError("DYNREG_SIM_FAULT: bad item %r" % item)
            limit = int(parts[2]) if len(parts) > 2 else 0
            _faults[parts[0]] = (parts[1], limit)
    return _faults


def get(kind):
    """(mode, number) of the fault set for `kind` ("nvs_write", "wifi", ...), or None."""
    return _load().get(kind)


def count(kind):
    """Count one event of `kind`; return how many there have been this boot (1 for the first)."""
    _counts[kind] = _counts.get(kind, 0) + 1
    return _counts[kind]


def active(kind):
    """For counted faults (wifi, ntp): (mode) if this event is to fail, else None. Counts the event."""
    f = get(kind)
    if f is None:
        return None
    n = count(kind)
    mode, limit = f
    if limit and n > limit:
        return None
    return mode


def power_cut():
    """Die as a power cut does: now, with the dedicated exit code."""
    if sys.implementation.name == "cpython":
        os._exit(POWER_CUT_EXIT)
    sys.exit(POWER_CUT_EXIT)
