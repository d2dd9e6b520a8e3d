"""The simulated board's real-time clock (not part of any real board).

With the fault clock:unset (simfault.py) the clock reads 2000-01-01 at boot, as an ESP32 without
a battery-backed RTC does after power-up, until ntptime.settime() succeeds; otherwise the host's
clock. rom.py routes time.time() through now(): under CPython by patching time.time, under
MicroPython through boards/sim/clock/time.py, which shadows the built-in time module.
"""
import simfault

UNSET_AT = 946684800  # 2000-01-01 00:00:00 UTC in Unix seconds
_offset = None  # seconds added to the host's clock; 0 once NTP has set it


def now(host_time):
    """The board's clock, given the host's time.time()."""
    global _offset
    if _offset is None:
        _offset = UNSET_AT - int(host_time) if simfault.get("clock") else 0
    return host_time + _offset


def set_by_ntp():
    """ntptime.settime() succeeded: the clock is right from now on."""
    global _offset
    _offset = 0
