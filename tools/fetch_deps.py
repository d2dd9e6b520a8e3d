"""Fetch the firmware's third-party MicroPython code: umqtt.simple 1.3.4.

Downloads the micropython-umqtt.simple 1.3.4 sdist from PyPI (pinned by
sha256), caches it in build/deps/, and writes two variants:
- build/deps/legacy/umqtt/simple.py: the file as released on PyPI
  (MQTTClient(..., ssl=True, ssl_params={...}) -> ussl.wrap_socket(sock, **ssl_params));
- build/deps/frozen/umqtt/simple.py: the same file with the API of the
  umqtt.simple frozen into ESP32 firmware >= 1.23 (ssl=<SSLContext or None>,
  wrapped with ssl.wrap_socket(sock, server_hostname=server); no ssl_params;
  user/password sent only when user is non-empty), derived by exact line
  replacements so that a different upstream file fails loudly.
Idempotent: a cached sdist with the right hash is not downloaded again.
Stdlib only.
"""
import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "micropython-umqtt.simple"
VERSION = "1.3.4"
SDIST_NAME = "micropython-umqtt.simple-1.3.4.tar.gz"
SDIST_SHA256 = "b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f"
MEMBER = "micropython-umqtt.simple-1.3.4/umqtt/simple.py"
PYPI_JSON = "https://pypi.org/pypi/%s/json" % PACKAGE

# (old text, new text, how many times old must occur)
FROZEN_EDITS = (
    (
        "                 ssl=False, ssl_params={}):\n",
        "                 ssl=None):\n",
        1,
    ),
    ("        self.ssl_params = ssl_params\n", "", 1),
    (
        "            import ussl\n"
        "            self.sock = ussl.wrap_socket(self.sock, **self.ssl_params)\n",
        "            self.sock = self.ssl.wrap_socket(self.sock, server_hostname=self.server)\n",
        1,
    ),
    ("        if self.user is not None:\n", "        if self.user:\n", 2),
)
FROZEN_HEADER = (
    "# Derived by tools/fetch_deps.py from micropython-umqtt.simple 1.3.4 (PyPI):\n"
    "# the SSLContext API of the umqtt.simple frozen into ESP32 firmware >= 1.23.\n"
)


class FetchError(Exception):
    """Download or verification failure (message is printable)."""


def sha256_of(path):
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(65536), b""):
            digest.update(block)
    return digest.hexdigest()


def sdist_url(timeout=30):
    """The sdist's download URL, from PyPI's JSON API."""
    with urllib.request.urlopen(PYPI_JSON, timeout=timeout) as reply:
        doc = json.load(reply)
    for item in doc["releases"].get(VERSION, []):
        if item["packagetype"] == "sdist" and item["digests"]["sha256"] == SDIST_SHA256:
            return item["url"]
    raise FetchError("PyPI lists no %s %s sdist with the pinned sha256" % (PACKAGE, VERSION))


def download(url, dest, timeout=60):
    """Fetch url to dest (via a temporary file); check the pinned hash."""
    tmp = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url, timeout=timeout) as reply, open(tmp, "wb") as f:
        shutil.copyfileobj(reply, f)
    if sha256_of(tmp) != SDIST_SHA256:
        tmp.unlink()
        raise FetchError("%s: sha256 mismatch, refusing it" % url)
    os.replace(tmp, dest)


def ensure_sdist(cache_dir, sdist=None):
    """Path of a verified sdist in cache_dir, copied from sdist or downloaded."""
    cached = Path(cache_dir) / SDIST_NAME
    if cached.exists() and sha256_of(cached) == SDIST_SHA256:
        return cached
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    if sdist:
        if sha256_of(sdist) != SDIST_SHA256:
            raise FetchError("%s: sha256 mismatch, expected %s" % (sdist, SDIST_SHA256))
        shutil.copyfile(sdist, cached)
    else:
        download(sdist_url(), cached)
    return cached


def extract_simple(sdist_path):
    """Text of umqtt/simple.py inside the sdist."""
    with tarfile.open(sdist_path, "r:gz") as tar:
        member = tar.extractfile(MEMBER)
        if member is None:
            raise FetchError("%s has no %s" % (sdist_path, MEMBER))
        return io.TextIOWrapper(member, encoding="utf-8").read()


def derive_frozen(source):
    """The frozen-firmware variant of umqtt/simple.py 1.3.4's text."""
    for old, new, count in FROZEN_EDITS:
        found = source.count(old)
        if found != count:
            raise FetchError("umqtt/simple.py: expected %d x %r, found %d" % (count, old, found))
        source = source.replace(old, new)
    return FROZEN_HEADER + source


def write(path, text):
    """Write text to path atomically, creating directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def fetch(dest, sdist=None):
    """Populate dest/legacy and dest/frozen; return the two written paths."""
    dest = Path(dest)
    source = extract_simple(ensure_sdist(dest, sdist))
    legacy = dest / "legacy" / "umqtt" / "simple.py"
    frozen = dest / "frozen" / "umqtt" / "simple.py"
    write(legacy, source)
    write(frozen, derive_frozen(source))
    return legacy, frozen


def main(argv=None):
    parser = argparse.ArgumentParser(description="Fetch umqtt.simple %s for the firmware and the simulator." % VERSION)
    parser.add_argument("--dest", default=str(REPO / "build" / "deps"), help="output and cache directory")
    parser.add_argument("--sdist", help="use this already downloaded %s instead of PyPI" % SDIST_NAME)
    args = parser.parse_args(argv)
    try:
        for path in fetch(args.dest, args.sdist):
            print("fetch_deps: wrote %s" % path)
    except (FetchError, OSError, tarfile.TarError, ValueError, KeyError) as exc:
        print("fetch_deps: error: %s" % exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
