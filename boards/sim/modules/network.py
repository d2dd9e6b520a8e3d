"""Simulated network module: the ESP32 Wi-Fi station interface.

Runs under MicroPython (unix port) and CPython. The access point in range is
given by the environment variable DYNREG_SIM_WIFI = "ssid\\npassword"
(unset or empty: no access point). The host's own network stands in for the
Wi-Fi link: sockets work whatever the simulated link state (the firmware is
expected to wait for isconnected() first, as on the board).
DYNREG_SIM_FAULT (simfault.py) "wifi:fail[:K]" hides the access point, "wifi:timeout[:K]"
leaves the association connecting for ever, for the first K connect() calls of the boot.
"""
import os
import time

import machine
import simfault

STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202

_CONNECT_MS = 50  # how long an association takes
_IFCONFIG = ("192.168.4.2", "255.255.255.0", "192.168.4.1", "192.168.4.1")
_NO_IP = ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")

# Per interface state, shared by all WLAN objects (on the board WLAN(STA_IF)
# always returns the same object).
_state = {}


def _ticks():
    if hasattr(time, "ticks_ms"):
        return time.ticks_ms()
    return int(time.monotonic() * 1000)


def _elapsed(start):
    if hasattr(time, "ticks_diff"):
        return time.ticks_diff(_ticks(), start)
    return _ticks() - start


def _text(value):
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode()
    return value


def _access_point():
    """(ssid, password) of the access point in range, or None."""
    spec = os.getenv("DYNREG_SIM_WIFI")
    if not spec:
        return None
    ssid, _, password = spec.partition("\n")
    return ssid, password


class WLAN:
    """Station (STA_IF) or access point (AP_IF) interface."""

    def __init__(self, interface_id=STA_IF):
        if interface_id not in (STA_IF, AP_IF):
            raise ValueError("invalid WLAN interface identifier")
        self._if = interface_id
        if interface_id not in _state:
            _state[interface_id] = {"active": False, "result": None, "since": 0, "essid": ""}
        self._s = _state[interface_id]

    def active(self, is_active=None):
        """Switch the radio on (True) or off (False); return whether it is on."""
        if is_active is not None:
            self._s["active"] = bool(is_active)
            if not is_active:
                self.disconnect()
        return self._s["active"]

    def connect(self, ssid, key=None, *, bssid=None):
        """Start associating; poll isconnected() or status() for the outcome."""
        if self._if != STA_IF:
            raise OSError("STA required")
        if not self._s["active"]:
            raise OSError("Wifi Not Started")
        ssid = _text(ssid)
        ap = _access_point()
        fault = simfault.active("wifi")
        if fault == "timeout":
            result = STAT_CONNECTING  # the association never completes
        elif fault == "fail" or ap is None or ap[0] != ssid:
            result = STAT_NO_AP_FOUND
        elif ap[1] != (_text(key) or ""):
            result = STAT_WRONG_PASSWORD
        else:
            result = STAT_GOT_IP
        self._s["result"] = result
        self._s["since"] = _ticks()
        self._s["essid"] = ssid

    def disconnect(self):
        """Leave the access point."""
        self._s["result"] = None

    def status(self):
        """One of the STAT_* constants."""
        if not self._s["active"] or self._s["result"] is None:
            return STAT_IDLE
        if _elapsed(self._s["since"]) < _CONNECT_MS:
            return STAT_CONNECTING
        return self._s["result"]

    def isconnected(self):
        """True once associated and given an address."""
        return self.status() == STAT_GOT_IP

    def config(self, *args, **kwargs):
        """config('mac') / config('essid'); setting parameters is accepted and ignored."""
        if kwargs:
            return None
        if len(args) != 1:
            raise TypeError("can query only one param")
        if args[0] == "mac":
            mac = bytearray(machine.unique_id())
            if self._if == AP_IF:
                mac[5] = (mac[5] + 1) & 0xFF  # the ESP32 AP MAC is base MAC + 1
            return bytes(mac)
        if args[0] == "essid":
            return self._s["essid"]
        raise ValueError("unknown config param")

    def ifconfig(self):
        """(ip, netmask, gateway, dns) once connected, zeros before."""
        return _IFCONFIG if self.isconnected() else _NO_IP
