"""Simulated ntptime module (micropython-lib's ntptime API).

Runs under MicroPython (unix port) and CPython. The host clock is already
right, so settime() only checks that the simulated Wi-Fi is up; without it the
real module's UDP query would time out.
"""
import network
import simclock
import simfault

host = "pool.ntp.org"
timeout = 1


def settime():
    """Set the RTC from NTP: OSError(110) (ETIMEDOUT) without Wi-Fi."""
    if simfault.active("ntp") == "fail":
        raise OSError(110)  # fault injected (DYNREG_SIM_FAULT ntp:fail)
    if not network.WLAN(network.STA_IF).isconnected():
        raise OSError(110)
    simclock.set_by_ntp()
