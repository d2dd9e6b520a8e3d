"""The one secret scan of the tests: whole, partial and derived leaks of secrets in captured text.

A leak is any of, in a board's output, the emulator's log or a tool's output:
- a run of MIN_RUN (8) or more characters of a secret: every 8-character window of the secret's text,
  of the hex and base64 forms of its bytes and, for a base64 secret (a Tencent psk), of the hex and
  base64 forms of what it decodes to. A window that also occurs in a public value (product id,
  device name, host: the `public` argument) or in the source of the firmware, the emulator and the
  simulator (text the code prints by itself, e.g. "Password") is not counted, so a secret that shares
  a prefix with its product id or a word with a log line gives no false alarm. A secret shorter than
  MIN_RUN counts only as a whole token.
- with derived=True, a token shaped like what a secret signs (an HMAC-SHA1/SHA-256 digest as hex:
  MQTT passwords of all three platforms; as base64: Tencent request signatures, Azure derived device keys),
  or an Azure SAS token (SharedAccessSignature ..., or its percent-encoded signature). The scanned text
  never carries a legitimate digest of that shape, so each such token is a signature or password
  derived from a secret.
scan() returns the findings (never the secret itself: a finding names the form and where it was).
"""

import base64
import binascii
import re
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
_CODE = ("firmware/lib/dynreg", "tools/cloud", "tools/sim", "boards/sim/modules", "boards/sim/cpython")
_code_windows = None

MIN_RUN = 8
# Hex digests of SHA-1 (40) and SHA-256 (64); base64 of them (28 and 44 characters, one "=").
_DIGEST = re.compile(r"(?<![0-9A-Za-z+/])(?:[0-9a-fA-F]{64}|[0-9a-fA-F]{40}|[A-Za-z0-9+/]{43}=|[A-Za-z0-9+/]{27}=)"
                     r"(?![0-9A-Za-z+/=])")
# An Azure SAS token (the MQTT password of DPS and IoT Hub), or its signature percent-encoded on its own.
_SAS = re.compile(r"SharedAccessSignature|sig=[A-Za-z0-9%+/=]{8,}|[A-Za-z0-9%+/]{36,}%3D")


def forms(secret):
    """{form name: text} of one secret (str or bytes): itself, its hex and base64, and a base64 secret's bytes."""
    raw = secret.encode() if isinstance(secret, str) else bytes(secret)
    text = raw.decode("latin-1")
    out = {"text": text, "hex": raw.hex(), "base64": base64.b64encode(raw).decode()}
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        decoded = None
    if decoded and len(decoded) >= 4:
        out["decoded hex"] = decoded.hex()
        out["decoded base64"] = base64.b64encode(decoded).decode().rstrip("=")
    return out


def _all_windows(text):
    return {text[j:j + MIN_RUN] for j in range(len(text) - MIN_RUN + 1)}


def _windows(secrets, public):
    """{8-char window: (secret index, form)} of every secret form, minus windows of public values and code."""
    global _code_windows
    if _code_windows is None:
        _code_windows = set()
        for d in _CODE:
            for path in sorted((_REPO / d).glob("*.py")):
                _code_windows |= _all_windows(path.read_text())
    known = _code_windows | set().union(*(_all_windows(p) for p in public))
    found = {}
    for i, secret in enumerate(secrets):
        for form, text in forms(secret).items():
            for w in _all_windows(text) - known:
                found.setdefault(w, (i, form))
    return found


def scan(text, secrets, public=(), derived=False, where="output"):
    """The leaks in `text` (a list of strings naming each: where, which secret number, form, offset)."""
    secrets = [s for s in secrets if s]
    findings = []
    windows = _windows([s for s in secrets if len(s) >= MIN_RUN], public)
    i = 0
    while i <= len(text) - MIN_RUN:
        hit = windows.get(text[i:i + MIN_RUN])
        if hit:
            findings.append("%s: %d+ characters of secret #%d (%s) at offset %d" % (where, MIN_RUN, hit[0], hit[1], i))
            i += MIN_RUN  # one finding per run
        else:
            i += 1
    for n, s in enumerate(secrets):
        s = s.decode("latin-1") if isinstance(s, bytes) else s
        if len(s) < MIN_RUN:
            for m in re.finditer(r"(?<![0-9A-Za-z])%s(?![0-9A-Za-z])" % re.escape(s), text):
                findings.append("%s: the whole short secret #%d at offset %d" % (where, n, m.start()))
    if derived:
        for m in _DIGEST.finditer(text):
            findings.append("%s: a %d-character signature or password at offset %d" % (where, len(m.group()), m.start()))
        for m in _SAS.finditer(text):
            findings.append("%s: a SAS token or its signature at offset %d" % (where, m.start()))
    return findings


def assert_clean(text, secrets, public=(), derived=False, where="output"):
    """Fail (without quoting the secret) when `text` leaks; return the number of leaks found (0)."""
    found = scan(text, secrets, public, derived, where)
    assert not found, "secret leak:\n" + "\n".join(found[:10])
    return len(found)
