"""Fetch the firmware's third-party MicroPython code: umqtt.simple 1.3.4.

Downloads the micropython-umqtt.simple 1.3.4 sdist (pinned by sha256) from
the package index pip is configured for (`pip config list`: index-url,
extra-index-url, cert, proxy; PIP_* environment variables included; default
PyPI), through the index's simple API (PEP 503), so it works wherever
`pip install` works. (`pip download` itself cannot fetch it: the sdist has no
setup.py or pyproject.toml, and pip refuses what it cannot build.) It caches
the sdist in build/deps/ and writes two variants:
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
import html.parser
import io
import os
import shutil
import ssl
import subprocess
import sys
import tarfile
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "micropython-umqtt.simple"
VERSION = "1.3.4"
SDIST_NAME = "micropython-umqtt.simple-1.3.4.tar.gz"
SDIST_SHA256 = "b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f"
MEMBER = "micropython-umqtt.simple-1.3.4/umqtt/simple.py"
PROJECT = "micropython-umqtt-simple"  # PACKAGE as the simple API spells it (PEP 503 normalized)
DEFAULT_INDEX = "https://pypi.org/simple"

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


def pip_config(run=subprocess.run):
    """{name: value} of pip's configuration as `pip config list` reports it, the environment's PIP_* first.

    pip reads its files in order (global, user, site: a later one wins) and lets PIP_* variables
    override them all; a command's own section ([download], [install]) beats [global].
    """
    done = run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    found = {}
    for line in done.stdout.splitlines():
        key, sep, value = line.partition("=")
        section, _, name = key.rpartition(".")
        if not sep or section not in (":env:", "global", "download", "install"):
            continue
        rank = {":env:": 3, "download": 2, "install": 2, "global": 1}[section]
        if rank >= found.get(name, (0, None))[0]:
            found[name] = (rank, value.strip().strip("'\""))
    return dict((name, value) for name, (_, value) in found.items())


def opener(config):
    """A urllib opener with pip's cert (CA bundle) and proxy settings."""
    handlers = [urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=config.get("cert") or None))]
    if config.get("proxy"):
        handlers.append(urllib.request.ProxyHandler({"http": config["proxy"], "https": config["proxy"]}))
    return urllib.request.build_opener(*handlers)


class _Links(html.parser.HTMLParser):
    """The href of every <a> on a PEP 503 project page."""

    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.links += [value for name, value in attrs if name == "href" and value]


def sdist_url(config, open_url, timeout=30):
    """The sdist's URL on the first index (index-url, then extra-index-url) that lists it."""
    indexes = [config.get("index-url") or DEFAULT_INDEX] + config.get("extra-index-url", "").split()
    tried = []
    for index in indexes:
        page = index.rstrip("/") + "/" + PROJECT + "/"
        try:
            with open_url(page, timeout=timeout) as reply:
                text = reply.read(1 << 20).decode("utf-8", "replace")  # a project page is small
        except (OSError, ValueError) as exc:
            tried.append("%s (%s)" % (page, getattr(exc, "reason", exc)))
            continue
        links = _Links()
        links.feed(text)
        for href in links.links:
            url = urllib.parse.urljoin(page, href)
            if urllib.parse.unquote(urllib.parse.urlsplit(url).path).rsplit("/", 1)[-1] == SDIST_NAME:
                return url.split("#", 1)[0]
        tried.append("%s (no %s)" % (page, SDIST_NAME))
    raise FetchError("no package index pip is configured for has %s: %s" % (SDIST_NAME, "; ".join(tried)))


def download(dest, timeout=60):
    """Fetch the sdist from pip's package index to dest (via a temporary file); check the pinned hash."""
    config = pip_config()
    open_url = opener(config).open
    url = sdist_url(config, open_url)
    tmp = dest.with_name(dest.name + ".part")
    with open_url(url, timeout=timeout) as reply, open(tmp, "wb") as f:
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
        download(cached)
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
    parser.add_argument("--sdist", help="use this already downloaded %s instead of the package index" % SDIST_NAME)
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
