"""Emulator state that must outlive a restart: the console password and the signatures already used.

Both files live in the state directory and are created 0600 whatever the umask.

console.password  the console login's password (one line): generated on the first run unless the
                  user gives one (--console-password or DYNREG_CONSOLE_PASSWORD), then kept.
seen-<platform>   one JSON line per accepted registration signature: {"k": sha256 of the request's
                  identifying fields, "o": who used it first, "t": until when it matters (Unix s)}.
                  Read back at start-up (expired lines dropped), so a request captured before a
                  restart is still refused after it.
"""

import hashlib
import json
import os
import secrets
import threading
import time

CONSOLE_FILE = "console.password"


def write_private(path, text):
    """Write text to path atomically (temp file + rename), readable by the owner only."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # O_CREAT's mode is cut by the umask, and an old temp file keeps its mode
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def console_password(state_dir, given=None):
    """(password, generated): the user's, else the stored one, else a new one (stored 0600)."""
    path = os.path.join(state_dir, CONSOLE_FILE)
    if given:
        write_private(path, given + "\n")
        return given, False
    stored = read_console_password(state_dir)
    if stored:
        return stored, False
    password = secrets.token_urlsafe(18)
    write_private(path, password + "\n")
    return password, True


def read_console_password(state_dir):
    """The console password kept in a state directory, or None (for tools and tests)."""
    try:
        with open(os.path.join(state_dir, CONSOLE_FILE), encoding="utf-8") as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None


def seen_signatures(args, platform):
    """The platform's used signatures (state dir seen-<platform>.json), kept while a signed request may
    come back: its timestamp may lie --ts-window (600 s when unchecked) on either side of now."""
    return SeenOnce(os.path.join(os.path.abspath(args.state), "seen-%s.json" % platform), 2 * (args.ts_window or 600))


class SeenOnce:
    """Registration signatures already used, kept for `keep` seconds, on disk.

    claim(fields, owner) records who first used a signature and returns None, or, when it was used
    before, that first owner: a caller refuses a replay (Tencent: any second use) or a reuse by
    someone else (Protco: another device id). Only digests are stored: the file holds no signature that could be replayed.
    """

    def __init__(self, path, keep):
        self.path = path
        self.keep = keep
        self.lock = threading.Lock()
        self._seen = {}  # digest -> (owner, until)
        now = time.time()
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                        if entry["t"] > now:
                            self._seen[entry["k"]] = (entry["o"], entry["t"])
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut by a crash: its request was never answered
        except FileNotFoundError:
            pass
        self._rewrite()

    def _rewrite(self):
        write_private(self.path, "".join(self._line(k, o, t) for k, (o, t) in self._seen.items()))

    @staticmethod
    def _line(digest, owner, until):
        return json.dumps({"k": digest, "o": owner, "t": until}, separators=(",", ":")) + "\n"

    def first(self, fields):
        """The owner that used the signature made of fields (a tuple of texts), or None."""
        with self.lock:
            found = self._seen.get(_digest(fields))
        return found[0] if found and found[1] > time.time() else None

    def claim(self, fields, owner=""):
        """None when the signature made of fields is new (then it is recorded for owner, on disk
        before this returns); else the owner that used it first."""
        digest = _digest(fields)
        now = time.time()
        with self.lock:
            found = self._seen.get(digest)
            if found and found[1] > now:
                return found[0]
            if len(self._seen) > 1000:  # drop what has expired, on disk too
                self._seen = {k: v for k, v in self._seen.items() if v[1] > now}
                self._rewrite()
            until = now + self.keep
            self._seen[digest] = (owner, until)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as f:
                f.write(self._line(digest, owner, until))
            return None


def _digest(fields):
    return hashlib.sha256(json.dumps(list(fields)).encode()).hexdigest()
