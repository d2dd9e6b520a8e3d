"""`make sim` as a user runs it: each shipped settings file registers, resets, logs in, reports, exits 0,
and prints no secret (product secrets, issued secrets, Wi-Fi password)."""

import fcntl
import json
import os
import re
import subprocess
import tempfile

import pytest

from host_tests.conftest import REPO
from host_tests.secrets_scan import assert_clean

SETTINGS = sorted((REPO / "boards" / "sim" / "settings").glob("*.json"))


@pytest.fixture(scope="module", autouse=True)
def _fixed_ports():
    """make sim listens on the settings' fixed ports (8443, 8883): two suites on one machine take turns."""
    with open(os.path.join(tempfile.gettempdir(), "dynreg-ports.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda p: p.stem)
def test_make_sim(settings):
    proc = subprocess.run(["make", "-s", "sim", "SETTINGS=" + str(settings.relative_to(REPO))], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=180)
    out = proc.stdout
    assert proc.returncode == 0, out
    assert len(re.findall(r"^\[sim\] boot \d", out, re.M)) == 2, out
    for line in ("registered: stored", "[sim] machine.reset()", "mqtt: logged in", "report 3 sent",
                 "[sim] main.py returned"):
        assert line in out, (line, out)
    secrets = {v for k, v in json.loads(settings.read_text()).items() if k in ("prod_secret", "wifi_pass")}
    registry = json.loads((REPO / "tools" / "cloud" / "registry.json").read_text())
    secrets |= {p["secret"] for products in registry.values() if isinstance(products, dict)
                for p in products.values() if isinstance(p, dict) and "secret" in p}
    devices = json.loads((REPO / "build" / "sim" / "cloud" / "devices.json").read_text())
    secrets |= {rec[k] for recs in devices.values() for rec in recs.values() for k in ("psk", "secret", "token") if k in rec}
    assert secrets
    public = {p for products in registry.values() if isinstance(products, dict) for p in products}
    assert_clean(out, secrets, public | {k for recs in devices.values() for k in recs}, derived=True,
                 where="make sim's output")
