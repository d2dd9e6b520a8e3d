"""MicroPython's time with the simulated RTC (simclock.py): on sys.path only with the fault clock:unset."""
from utime import *  # noqa: F401,F403  the unix port's built-in time, under its other name

import simclock
import utime


def time():
    return simclock.now(utime.time())
