"""The platform contract (firmware/lib/dynreg/flow.py's docstring): every platform in the one list has every part.

Adding a platform means its firmware modules, its emulator module, its settings file, its docs page, its
registry products and its package.json entries; this test walks the list and names what is missing.
"""
import ast
import importlib
import json
import re

import pytest

from host_tests.conftest import REPO, run_on_device
from tools import platforms
from tools.factory import provision

# What each module must define, with its parameters (flow.py calls them so).
LOGIN = {"login": ["st", "name", "ctx", "keepalive"], "subscriptions": ["dev"], "report": ["dev", "props", "qos"]}
OPTIONAL = {"after_login": ["dev"], "handle": ["dev", "topic", "msg"]}
REGISTRATION = {"register": ["st", "name", "ctx"]}


def functions(path):
    """{name: [parameter names]} of a module's top-level functions."""
    tree = ast.parse(path.read_text())
    return dict((n.name, [a.arg for a in n.args.args]) for n in tree.body if isinstance(n, ast.FunctionDef))


def package_files():
    return dict(json.loads((REPO / "package.json").read_text())["urls"])


def test_the_list_is_the_firmwares():
    from_flow = ast.literal_eval(re.search(r"^PLATFORMS = (\(.*\))$", (REPO / "firmware" / "lib" / "dynreg" / "flow.py")
                                           .read_text(), re.M).group(1))
    assert platforms.PLATFORMS == from_flow == ("tencent", "ucloud", "protco", "aliyun", "thingsboard", "aws", "azure")
    assert provision.PLATFORMS is platforms.PLATFORMS


@pytest.mark.parametrize("platform", platforms.PLATFORMS)
def test_platform_has_every_part(platform):
    parts = platforms.parts(platform)
    missing = sorted("%s %s" % (what, path) for what, path in parts.items() if not (REPO / path).is_file())
    assert not missing, "platform %s lacks: %s" % (platform, ", ".join(missing))

    login = functions(REPO / parts["login module"])
    lo, hi = ast.literal_eval(re.search(r"^KEEPALIVE = (\(.*?\))", (REPO / parts["login module"]).read_text(),
                                        re.M).group(1))
    assert 1 <= lo <= 60 <= hi <= 65535  # the default keepalive_s (60 s) is allowed everywhere
    for name, params in list(LOGIN.items()) + [(k, v) for k, v in OPTIONAL.items() if k in login]:
        assert login.get(name) == params, "%s: %s(%s)" % (parts["login module"], name, ", ".join(params))
    reg = functions(REPO / parts["registration module"])
    for name, params in REGISTRATION.items():
        assert reg.get(name) == params, "%s: %s(%s)" % (parts["registration module"], name, ", ".join(params))

    emulator = importlib.import_module("tools.cloud." + platform)
    # "secret": the product secret, where the platform has one (AWS: a claim certificate instead)
    assert callable(emulator.emulate) and "dynreg" in emulator.OPTIONS and emulator.ROUND_TRIPS >= 1

    settings = provision.read_settings(REPO / parts["settings file"])
    assert settings["platform"] == platform
    registry = json.loads((REPO / "tools" / "cloud" / "registry.json").read_text())
    assert settings["prod_id"] in registry.get(platform, {}), "registry.json has no %s product %s" % (
        platform, settings["prod_id"])

    files = package_files()
    for path in (parts["login module"], parts["registration module"]):
        assert "dynreg/" + path.rsplit("/", 1)[1] in files, "package.json lacks %s" % path


def test_platform_names_are_listed_nowhere_else():
    """The list is written once: no other file of the firmware or the tools spells it out."""
    spelled = re.compile(r"""["']tencent["'],\s*["']ucloud["'],\s*["']protco["']""")
    found = [str(p.relative_to(REPO)) for d in ("firmware", "tools") for p in (REPO / d).rglob("*.py")
             if spelled.search(p.read_text())]
    assert found == ["firmware/lib/dynreg/flow.py"]


def test_optional_parts_default_to_nothing(interp, tmp_path):
    """ucloud has neither after_login nor handle: flow.load() gives it the defaults (nothing done, not handled)."""
    assert not set(OPTIONAL) & set(functions(REPO / "firmware" / "lib" / "dynreg" / "ucloud.py"))
    out = run_on_device(interp, tmp_path, "from dynreg import flow\n"
                        "u = flow.load('ucloud')\n"
                        "print('defaults', u.after_login(None), u.handle(None, b'/p/d/set', b'{}'))\n"
                        "t = flow.load('tencent')\n"
                        "print('own', t.handle is not flow._nothing)\n")
    assert "defaults False False" in out and "own True" in out
