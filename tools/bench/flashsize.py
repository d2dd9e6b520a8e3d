"""2. Flash: .mpy bytes of every module and of the modules each platform imports per boot."""
import re

from tools.bench.common import device_settings, fresh_name, run_board

FLASH_TARGET = 8192  # bytes of .mpy a platform imports


def flash(out, emu, platforms, sizes):
    """Bytes of .mpy per module and per platform's real import set (registration and login boot)."""
    umqtt = sizes["umqtt.simple"]
    result = {"modules": sizes, "umqtt_simple": umqtt, "platforms": {}}
    for p in platforms:
        run = run_board(out, emu, device_settings(emu, p, fresh_name(p)), out / "probe")
        sets = {}
        for _, text in run.lines:
            m = re.match(r"bench-modules (\w+) (.*)", text)
            if m:
                sets[m.group(1)] = sorted(x for x in m.group(2).split() if x in sizes)
        loaded = re.search(r"bench-umqtt-file (\S+)", run.out)
        if run.rc != 0 or set(sets) != {"registration", "login"} or not loaded:
            raise RuntimeError("flash probe for %s failed:\n%s" % (p, run.out[-3000:]))
        if not loaded.group(1).endswith(".mpy"):
            raise RuntimeError("umqtt.simple was loaded from %s, not the .mpy" % loaded.group(1))
        entry = {}
        for boot, mods in sets.items():
            own = [m for m in mods if m.startswith("dynreg")]
            entry[boot] = {"modules": mods, "dynreg_bytes": sum(sizes[m] for m in own),
                           "with_umqtt_bytes": sum(sizes[m] for m in mods)}
        union = sorted(set(sets["registration"]) | set(sets["login"]))
        entry["all"] = {"modules": union, "dynreg_bytes": sum(sizes[m] for m in union if m.startswith("dynreg"))}
        entry["ratio_umqtt"] = round(entry["all"]["dynreg_bytes"] / umqtt, 2)
        result["platforms"][p] = entry
    return result
