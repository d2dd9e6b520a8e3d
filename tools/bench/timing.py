"""3. Round trips of each registration, and 4. time from power-on to the first publish."""
import importlib
import re
import statistics

from tools.bench import sdk as official
from tools.bench.common import PRODUCTS, SUCCESS, device_settings, fresh_name, run_board, say



def min_round_trips(platform):
    """The fewest round trips its registration protocol allows (the emulator module's ROUND_TRIPS)."""
    return importlib.import_module("tools.cloud." + platform).ROUND_TRIPS


def timing(out, emu, platforms, runs, sdk):
    """Power-on to first publish: dynreg per platform and (if sdk) the official SDK, interleaved."""
    keys = ("first_boot_ms", "registration_boot_ms", "login_boot_ms", "startup_ms", "connect_ms", "after_login_ms")
    res = {p: {k: [] for k in keys} for p in platforms}
    sdk_res = {"total_ms": [], "after_registration_ms": []} if sdk else None
    names = {p: [] for p in platforms}
    for i in range(runs):
        for p in platforms:
            name = fresh_name(p)
            run = run_board(out, emu, device_settings(emu, p, name, wifi=False), out / "fw")
            if not run.ok:
                raise RuntimeError("timed run of %s failed:\n%s" % (p, run.out[-3000:]))
            names[p].append(name)
            b1, b2 = run.at(r"^\[sim\] boot 1"), run.at(r"^\[sim\] boot 2")
            login, logged = run.at(r"mqtt: connecting to", b2), run.at(r"mqtt: logged in")
            report = run.at(re.escape(SUCCESS))
            for key, (a, b) in zip(keys, ((b1, report), (b1, b2), (b2, report), (b2, login), (login, logged),
                                          (logged, report))):
                res[p][key].append(round((b - a) * 1000, 1))
        if sdk:
            run = official.run(out, emu)
            sdk_res["total_ms"].append(round(run.at(re.escape(SUCCESS)) * 1000, 1))
            sdk_res["after_registration_ms"].append(
                round((run.at(re.escape(SUCCESS)) - run.at(r"^sdk: registered")) * 1000, 1))
        say("timed run %d/%d done" % (i + 1, runs))
    for r in list(res.values()) + ([sdk_res] if sdk else []):
        for key in list(r):
            r[key.replace("_ms", "_median_ms")] = round(statistics.median(r[key]), 1)
    result = {"runs": runs, "platforms": res, "names": names}
    if sdk:
        result["sdk"] = sdk_res
        for p in platforms:
            res[p]["vs_sdk"] = round(res[p]["first_boot_median_ms"] / sdk_res["total_median_ms"], 2)
    return result

def round_trips(emu, names):
    """Round trips the emulator counted for each registration of the named devices."""
    devices = emu.devices()
    result = {}
    for p, ns in names.items():
        records = devices.get(p, {})
        found = [records[key].get("round_trips") for key in ("%s/%s" % (PRODUCTS[p], n) for n in ns) if key in records]
        result[p] = {"measured": found, "max": max(found) if found else None, "minimum": min_round_trips(p),
                     "met": bool(found) and max(found) <= min_round_trips(p) and len(found) == len(ns)}
    return result
