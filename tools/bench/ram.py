"""1. RAM: the smallest heap under which the whole flow succeeds, per platform, against the floor."""
import concurrent.futures
import time

from tools.bench.common import device_settings, floor_settings, fresh_name, run_board, say

RAM_TARGET = 1.5  # whole flow within this factor of the bare-MQTT floor
HEAP_LO, HEAP_HI, HEAP_MAX = 16 * 1024, 256 * 1024, 4 * 1024 * 1024


def smallest_heap(probe, step, verify):
    """Bisect the smallest heap (a multiple of `step`) for which probe(heap) -> Run succeeds.

    Returns (heap, Run of the largest failing probe). A heap that passes is checked `verify` more
    times; if any fails, the answer moves up one step (allocation is not strictly monotonic).
    """
    hi = HEAP_HI
    while not probe(hi).ok:
        hi *= 2
        if hi > HEAP_MAX:
            raise RuntimeError("fails even with a %d-byte heap" % HEAP_MAX)
    lo, lo_run = HEAP_LO, None
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        if mid <= lo:
            mid = lo + step
        run = probe(mid)
        if run.ok:
            hi = mid
        else:
            lo, lo_run = mid, run
    for _ in range(8):
        if all(probe(hi).ok for _ in range(verify)):
            break
        lo, hi = hi, hi + step
    return hi, lo_run

def ram(out, emu, platforms, step, verify):
    """Smallest heap per platform, for the floor and for an empty main.py, bisected in parallel."""
    def flow(platform):
        last = [0]

        def probe(heap):
            # A product's registration signature covers the product and the second (Protco: "uuid=<pid>,ts=<ts>"),
            # and the emulator gives a signature to the first device that uses it: two probes of one platform
            # in the same second would make the second one a refused reuse, not a heap measurement.
            while int(time.time()) <= last[0]:  # the previous probe registered at or before last[0]
                time.sleep(0.05)
            run = run_board(out, emu, device_settings(emu, platform, fresh_name(platform)), out / "fw", heap)
            last[0] = int(time.time())
            return run
        return probe

    jobs = {p: flow(p) for p in platforms}
    jobs["floor"] = lambda heap: run_board(out, emu, floor_settings(emu, fresh_name("floor")), out / "floor", heap)
    # the interpreter, the board's ROM script and an empty main.py: what the unix port needs for itself
    jobs["idle"] = lambda heap: run_board(out, emu, {"dev_name": fresh_name("idle")}, out / "idle", heap)
    results = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {pool.submit(smallest_heap, probe, step, verify): name for name, probe in jobs.items()}
        for fut in concurrent.futures.as_completed(futures):
            name = futures[fut]
            heap, lo_run = fut.result()
            entry = {"heap": heap}
            if name in platforms and lo_run is not None:
                # which boot ran out of memory one step below the answer
                entry["binding_boot"] = "login" if lo_run.at(r"^\[sim\] boot 2") is not None else "registration"
            results[name] = entry
            say("RAM %s: %d bytes" % (name, heap))
    floor = results["floor"]["heap"]
    for p in platforms:
        results[p]["ratio"] = round(results[p]["heap"] / floor, 3)
    return {"step": step, "floor": results["floor"], "idle": results["idle"],
            "platforms": {p: results[p] for p in platforms}}
