"""make bench: `python -m tools.bench [--quick] ...` (what it measures: tools/bench/__init__.py)."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tools.bench import fleet, flashsize, images, ram, reconnect, report, sdk, timing  # noqa: E402
from tools.bench.common import PRODUCTS, say, start_emulator  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Footprint and speed of dynreg (make bench).")
    p.add_argument("--quick", action="store_true", help="coarse bisection, one timed run, no SDK, no fleet")
    p.add_argument("--out", default=str(REPO / "build" / "bench"), help="output directory (default build/bench)")
    p.add_argument("--platforms", default=",".join(PRODUCTS), help="comma-separated subset of %s" % ",".join(PRODUCTS))
    p.add_argument("--runs", type=int, help="timed runs per platform (default 9, --quick 1)")
    p.add_argument("--step", type=int, help="heap bisection resolution in bytes (default 1024, --quick 8192)")
    p.add_argument("--fleet", type=int, default=1000, help="simulated devices in the fleet test (default 1000)")
    p.add_argument("--jitter-ms", type=int, default=30000, help="start-up jitter of the fleet's second run (ms)")
    p.add_argument("--fleet-deadline", type=int, default=60, help="seconds after power-on a fleet device keeps trying")
    p.add_argument("--no-sdk", action="store_true", help="skip the official SDK")
    p.add_argument("--no-fleet", action="store_true", help="skip the fleet test")
    p.add_argument("--sdk-harness", help=argparse.SUPPRESS)
    p.add_argument("--fleet-worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.platforms = [x for x in args.platforms.split(",") if x]
    if not args.platforms or set(args.platforms) - set(PRODUCTS):
        p.error("--platforms: choose from %s" % ", ".join(PRODUCTS))
    if args.runs is None:
        args.runs = 1 if args.quick else 9
    if args.step is None:
        args.step = 8192 if args.quick else 1024
    if args.quick:
        args.no_sdk = args.no_fleet = True
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.sdk_harness:
        return sdk.sdk_harness(json.loads(args.sdk_harness))
    if args.fleet_worker:
        return fleet.fleet_worker(json.loads(args.fleet_worker))
    started = time.monotonic()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "boards", ignore_errors=True)
    result = {"mode": "quick" if args.quick else "full", "platforms": args.platforms,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": report.machine_info()}
    sdk_missing = None if args.no_sdk else sdk.ensure_sdk()
    if sdk_missing:
        say("official SDK unavailable: %s" % sdk_missing)
        result["sdk_unavailable"] = sdk_missing
    say("compiling firmware/ with mpy-cross into %s" % (out / "fw"))
    sizes = images.build(out)
    emu = start_emulator(out / "cloud", cert_names=(sdk.SDK_REG_HOST, PRODUCTS["tencent"] + ".iotcloud.tencentdevices.com"))
    failed = False
    try:
        steps = [("flash", lambda: flashsize.flash(out, emu, args.platforms, sizes)),
                 ("ram", lambda: ram.ram(out, emu, args.platforms, args.step, 0 if args.quick else 2)),
                 ("time", lambda: timing.timing(out, emu, args.platforms, args.runs, not args.no_sdk and not sdk_missing)),
                 ("reconnect", lambda: reconnect.reconnects(out, emu, 10 if args.quick else 100))]
        for key, step in steps:
            say("measuring %s" % key)
            try:
                result[key] = step()
            except (RuntimeError, subprocess.SubprocessError) as e:
                failed = True
                result.setdefault("errors", {})[key] = str(e)
                say("%s failed: %s" % (key, str(e)[:2000]))
        if "time" in result:
            result["round_trips"] = timing.round_trips(emu, result["time"].pop("names"))
    finally:
        emu.stop()
    if not args.no_fleet:
        say("fleet: %d devices" % args.fleet)
        try:
            result["fleet"] = fleet.fleet(out, args.fleet, args.jitter_ms, args.fleet_deadline)
        except (RuntimeError, subprocess.SubprocessError, ValueError) as e:
            failed = True
            result.setdefault("errors", {})["fleet"] = str(e)
            say("fleet failed: %s" % str(e)[:2000])
    result["targets"] = report.evaluate(result)
    result["duration_s"] = round(time.monotonic() - started, 1)
    m = result["machine"]
    m["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    head = ("dynreg bench (%s), %s: %s × %d, %s; CPython %s; MicroPython %s, unix port; %s; load average "
            "%.1f at the start, %.1f at the end; %.0f s" % (
                result["mode"], result["date"], m["cpu"], m["nproc"], m["os"], m["python"], m["micropython"],
                m["mpy_cross"], m["loadavg_start"][0], m["loadavg_end"][0], result["duration_s"]))
    text = head + "\n\n" + report.table(result) + "\n"
    (out / "bench.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "bench.md").write_text(text)
    print(text)
    print("JSON: %s" % (out / "bench.json"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
