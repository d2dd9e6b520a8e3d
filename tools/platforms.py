"""The platforms dynreg supports, as the host tools see them: read from the firmware's own list.

PLATFORMS is firmware/lib/dynreg/flow.py's PLATFORMS (a literal tuple, read here without running
device code), the one list; flow.py's docstring is the platform contract. parts(platform) names the
files a platform consists of; host_tests/test_platforms.py checks that each one is there.
"""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FLOW = REPO / "firmware" / "lib" / "dynreg" / "flow.py"


def _read(path=FLOW, name="PLATFORMS"):
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [name]:
            return tuple(ast.literal_eval(node.value))
    raise LookupError("%s defines no %s" % (path, name))


PLATFORMS = _read()


def parts(platform):
    """{what: path} of every file adding `platform` takes (relative to the repository)."""
    return {
        "login module": "firmware/lib/dynreg/%s.py" % platform,
        "registration module": "firmware/lib/dynreg/%s_reg.py" % platform,
        "emulator module": "tools/cloud/%s.py" % platform,
        "settings file": "boards/sim/settings/%s.json" % platform,
        "docs page": "docs/platforms/%s.md" % platform,
    }
