"""python -m tools.mutate: the mutation score of firmware/lib/dynreg under the fast tests (make mutate)."""

import argparse
import os
import sys

from tools.mutate import run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULES = ("crypto", "store", "http", "mqtt", "mqttreg", "tencent_reg", "ucloud_reg", "protco_reg")
# Fast, in-process and unix-port tests of the modules above: vectors, units, fuzz properties.
TESTS = ("host_tests/test_vectors.py", "host_tests/test_device_units.py", "host_tests/test_fuzz_parsers.py",
         "-k", "not verifies_the_server_name")  # (that one starts the cloud emulator: seconds per mutant)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", default=ROOT, help="tree to copy and mutate in (default: this repository)")
    p.add_argument("paths", nargs="*", help="files to mutate, relative to --root (default: %s)" % ", ".join(MODULES))
    p.add_argument("--tests", nargs="+", default=list(TESTS), help="pytest arguments that must catch the mutants")
    p.add_argument("--timeout", type=float, default=120, help="seconds per mutant before it counts as killed")
    p.add_argument("--limit", type=int, help="at most this many mutants per file")
    p.add_argument("--jobs", type=int, default=1, help="mutants run at a time, each in its own copy of the tree")
    p.add_argument("--min-score", type=float, default=0, help="exit 1 when a file scores below this percentage")
    a = p.parse_args(argv)
    # 50 fuzz examples per parser instead of 200: 4 s per surviving mutant instead of 10
    os.environ.setdefault("DYNREG_FUZZ_CASES", "50")
    paths = a.paths or ["firmware/lib/dynreg/%s.py" % m for m in MODULES]
    results = run(a.root, paths, a.tests, a.timeout, a.limit, a.jobs)
    total = sum(k + len(s) for k, s in results.values())
    killed = sum(k for k, _ in results.values())
    print("mutate: score %d/%d killed (%.1f %%)" % (killed, total, 100.0 * killed / total if total else 100))
    for path, (k, survivors) in results.items():
        n = k + len(survivors)
        print("  %-40s %4d/%-4d %5.1f %%" % (path, k, n, 100.0 * k / n if n else 100))
        for line, what in survivors:
            print("    survivor %s:%d %s" % (path, line, what))
    low = [p for p, (k, s) in results.items() if k + len(s) and 100.0 * k / (k + len(s)) < a.min_score]
    return 1 if low else 0


if __name__ == "__main__":
    sys.exit(main())
