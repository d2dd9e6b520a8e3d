"""5. Fleet: a thousand devices register at once after a power cut, without and with start-up jitter."""
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from tools.bench.common import FIRMWARE, PRODUCTS, REPO, SIM, TAG, say, start_emulator


def fleet(out, n, jitter_ms, deadline_s):
    """n devices after a power cut, without and with start-up jitter, each against a fresh emulator."""
    result = {"devices": n, "platform": "tencent", "deadline_s": deadline_s, "scenarios": {}}
    for label, jitter in (("no jitter", 0), ("jitter %d ms" % jitter_ms, jitter_ms)):
        emu = start_emulator(out / ("fleet-cloud-%d" % jitter))
        try:
            spec = {"n": n, "jitter_ms": jitter, "deadline_s": deadline_s, "port": emu.ports["https"],
                    "ca": str(emu.state / "ca.der"), "pid": PRODUCTS["tencent"],
                    "secret": emu.secret("tencent", PRODUCTS["tencent"]), "tag": "%s-%d" % (TAG, jitter)}
            done = subprocess.run([sys.executable, "-m", "tools.bench", "--fleet-worker", json.dumps(spec)],
                                  cwd=REPO, capture_output=True, text=True, timeout=deadline_s + 120)
            if done.returncode != 0:
                raise RuntimeError("fleet worker failed:\n%s" % done.stderr[-3000:])
            raw = json.loads(done.stdout.strip().splitlines()[-1])
            registered = sum(1 for r in emu.devices().get("tencent", {}).values() if r.get("registrations"))
        finally:
            emu.stop()
        scenario = fleet_summary(raw)
        if not scenario["registered"]:  # the harness itself is broken, not the cloud overloaded
            raise RuntimeError("fleet %s: no device registered; errors: %s" % (label, raw["errors"]))
        scenario.update(jitter_ms=jitter, registered_at_cloud=registered)
        result["scenarios"][label] = scenario
        say("fleet %s: %d registered, %d retried, requests peak %d/s" % (
            label, scenario["registered"], scenario["retried"], scenario["offered_peak_per_s"]))
    return result

def _peak(times, window=1.0):
    """Most events in any `window`-second interval."""
    times, best, j = sorted(times), 0, 0
    for i, t in enumerate(times):
        while times[j] < t - window:
            j += 1
        best = max(best, i - j + 1)
    return best

def fleet_summary(raw):
    """Request rates as the devices offer them (planned send times: power-on + jitter, failure + back-off)
    and as they were served (registrations completed); retries; how long the fleet took."""
    devices = raw["devices"]
    planned = [t for d in devices for t in d["planned"]]
    sent = [t for d in devices for t in d["attempts"]]
    dones = [d["done"] for d in devices if d["done"] is not None]
    waits = [d["done"] - d["planned"][0] for d in devices if d["done"] is not None]
    return {
        "registered": len(dones),
        "gave_up": len(devices) - len(dones),
        "requests": len(planned),
        "retried": sum(1 for d in devices if len(d["attempts"]) > 1),
        "max_attempts": max(len(d["attempts"]) for d in devices),
        "offered_peak_per_s": _peak(planned),
        # the power-on wave: every device's first request, over 0..jitter (at least one second)
        "offered_mean_per_s": round(len(devices) / max(1.0, max(d["planned"][0] for d in devices)), 1),
        "harness_sent_peak_per_s": _peak(sent),
        "served_peak_per_s": _peak(dones),
        "served_mean_per_s": round(len(dones) / max(dones), 1) if dones else 0,
        "all_registered_s": round(max(dones), 2) if len(dones) == len(devices) else None,
        "median_registered_s": round(statistics.median(dones), 2) if dones else None,
        # what one device waits: from its first request to its registration
        "median_wait_s": round(statistics.median(waits), 2) if waits else None,
        "max_wait_s": round(max(waits), 2) if waits else None,
        "errors": raw["errors"],
    }

class _DictStore:
    """dynreg.store.Store's reading API over a dict (one per simulated device).

    Not the real Store: the board's esp32.NVS is one partition per process, and the fleet runs all its
    devices in one process. (host_tests/test_fuzz_parsers.py has a look-alike for the same reason.)
    """

    def __init__(self, values):
        self.values = values

    def get(self, key):
        v = self.values.get(key)
        return v.encode() if isinstance(v, str) else v

    def text(self, key, default=None):
        v = self.get(key)
        return v.decode() if v else default

    def need(self, key):
        return self.values[key]

    def int(self, key, default=None):
        return self.values.get(key, default)

def fleet_worker(spec):
    """Run in its own CPython process with the board's sys.path: n devices in threads."""
    sys.path[:0] = [str(SIM / "cpython"), str(SIM / "modules"), str(REPO / "tools" / "factory"),
                    str(FIRMWARE / "lib")]  # as boards/sim/rom.py
    time.ticks_ms = lambda: time.monotonic_ns() // 1000000
    time.ticks_diff = lambda a, b: a - b
    time.sleep_ms = lambda ms: time.sleep(ms / 1000)
    import dynreg
    from dynreg import flow, net, tencent_reg

    dynreg.log = tencent_reg.log = lambda msg: None
    ca = Path(spec["ca"]).read_bytes()
    n, jitter, base, cap = spec["n"], spec["jitter_ms"], 2000, 300000  # the firmware's retry defaults
    power_on = threading.Event()
    t0 = [0.0]
    devices = [{"planned": [], "attempts": [], "done": None} for _ in range(n)]
    errors, lock = {}, threading.Lock()
    deadline = spec["deadline_s"]

    def device(i):
        st = _DictStore({"platform": "tencent", "prod_id": spec["pid"], "prod_secret": spec["secret"],
                         "reg_host": "localhost", "reg_port": spec["port"], "ca": ca})
        name = "fleet-%s-%04d" % (spec["tag"], i)
        ctx = net.tls_context(ca)  # each device makes its own at boot, as dynreg.flow.run()
        rec = devices[i]
        power_on.wait()
        wait = flow.jitter_ms(jitter) / 1000 if jitter else 0  # as dynreg.flow.run()
        time.sleep(max(0.0, wait - (time.monotonic() - t0[0])))
        attempt, planned = 0, wait  # when the device means to send (this harness may lag behind: "attempts")
        while True:
            attempt += 1
            rec["planned"].append(round(planned, 4))
            rec["attempts"].append(round(time.monotonic() - t0[0], 4))
            try:
                tencent_reg.register(st, name, ctx)
                rec["done"] = round(time.monotonic() - t0[0], 4)
                return
            except Exception as e:  # noqa: as the firmware's flow, any failure is retried
                why = "%s %s" % (type(e).__name__, e.args[0] if e.args else "")
                with lock:
                    errors[why] = errors.get(why, 0) + 1
            wait = flow.backoff_ms(attempt, base, cap) / 1000
            planned = time.monotonic() - t0[0] + wait
            if planned > deadline:
                return
            time.sleep(wait)

    threading.stack_size(256 * 1024)
    threads = [threading.Thread(target=device, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    t0[0] = time.monotonic()
    power_on.set()
    for t in threads:
        t.join(max(0.1, deadline + 30 - (time.monotonic() - t0[0])))
    print(json.dumps({"devices": devices, "errors": errors, "deadline_s": deadline}))
    return 0
