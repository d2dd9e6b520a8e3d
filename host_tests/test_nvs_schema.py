"""The host's NVS schema (tools/factory/nvs_schema.py) against the firmware, the board's NVS codec and the docs.

The firmware cannot import host code, so it keeps its own facts; these tests read them from its
source (ast) and fail when the two drift apart.
"""
import ast
import importlib.util
import json

import pytest

from host_tests.conftest import REPO
from tools.factory import nvs_schema as schema

FIRMWARE = REPO / "firmware" / "lib" / "dynreg"
# Store's accessors and the NVS type each one reads.
READS = {"int": {schema.I32}, "text": {schema.TEXT}, "need": {schema.TEXT}, "get": {schema.TEXT, schema.BINARY},
         "set": {schema.TEXT, schema.BINARY}, "erase": {schema.TEXT, schema.BINARY, schema.I32}}


def _module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _is_store(node):
    """st (flow, the platform modules) or dev.st (the application)."""
    return (isinstance(node, ast.Name) and node.id == "st") or (isinstance(node, ast.Attribute) and node.attr == "st")


def firmware_keys():
    """{(key, accessor)}: every literal key the firmware passes to a Store accessor (st.int("x"), ...)
    and every key a registration module returns for flow.py to store."""
    found = set()
    for path in sorted(FIRMWARE.glob("*.py")) + [REPO / "firmware" / "main.py"]:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in READS
                    and _is_store(node.func.value) and node.args
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                found.add((node.args[0].value, node.func.attr, path.name))
            if path.name.endswith("_reg.py") and isinstance(node, ast.Return) and isinstance(node.value, ast.List):
                for item in node.value.elts:
                    if isinstance(item, ast.Tuple) and isinstance(item.elts[0], ast.Constant):
                        found.add((item.elts[0].value, "set", path.name))
            # a loop over (key, ...) pairs that reads st.<accessor>(key), as protco_reg does
            if isinstance(node, ast.For) and isinstance(node.iter, ast.Tuple) and isinstance(node.target, ast.Tuple):
                var = node.target.elts[0].id
                used = [c.func.attr for b in node.body for c in ast.walk(b) if isinstance(c, ast.Call)
                        and isinstance(c.func, ast.Attribute) and c.func.attr in READS
                        and isinstance(c.func.value, ast.Name) and c.func.value.id == "st" and c.args
                        and isinstance(c.args[0], ast.Name) and c.args[0].id == var]
                for accessor in used:
                    for item in node.iter.elts:
                        found.add((item.elts[0].value, accessor, path.name))
    return found


def test_the_walker_sees_the_firmware():
    keys = set(k for k, _, _ in firmware_keys())
    # a walker that found nothing would pass everything below
    assert {"platform", "dev_secret", "mqtt_port", "prod_secret", "ca", "dev_id", "dev_uuid", "barcode",
            "report_s"} <= keys
    assert len(keys) >= 25


def test_every_key_the_firmware_reads_is_in_the_schema_with_its_type():
    wrong = []
    for key, accessor, where in sorted(firmware_keys()):
        entry = schema.BY_NAME.get(key)
        if entry is None:
            wrong.append("%s: %s(%r) is not in the schema" % (where, accessor, key))
        elif entry.kind not in READS[accessor]:
            wrong.append("%s: %s(%r) but the schema says %s" % (where, accessor, key, entry.kind))
    assert not wrong, "\n".join(wrong)


def test_registration_writes_only_registration_keys():
    written = set(k for k, a, where in firmware_keys() if a == "set")
    assert written == set(k.name for k in schema.KEYS if k.written == schema.REGISTRATION)
    assert set(schema.IDENTITY_KEYS) <= set(schema.SECRET_KEYS)


def _constant(path, name):
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == [name]:
            value = node.value
            if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "const":  # micropython.const
                value = value.args[0]
            return ast.literal_eval(value)
    raise AssertionError("%s has no %s" % (path, name))


def test_firmware_copies_of_the_facts():
    store = FIRMWARE / "store.py"
    assert _constant(store, "NULL_SECRETS") == schema.NULL_SECRETS
    assert _constant(store, "_MAX_BLOB") == schema.MAX_BLOB
    init = [n for n in ast.walk(ast.parse(store.read_text())) if isinstance(n, ast.FunctionDef) and n.name == "__init__"]
    assert init[0].args.defaults[0].value == schema.NAMESPACE


def test_board_copies_of_the_facts():
    nvsformat = _module("_schema_nvsformat", REPO / "tools" / "factory" / "nvsformat.py")
    assert nvsformat.MAX_KEY == schema.MAX_KEY_BYTES
    assert nvsformat.DEFAULT_SIZE == schema.PARTITION_SIZE
    sim = json.loads((REPO / "boards" / "sim" / "board.json").read_text())
    nvs = [row for row in sim["partitions"]["default"]["table"] if row[0] == "nvs"]
    assert int(nvs[0][4], 16) == schema.PARTITION_SIZE


def test_docs_nvs_keys_is_generated_from_the_schema():
    # python -m tools.factory.nvs_schema --doc rewrites it
    assert (REPO / "docs" / "nvs-keys.md").read_text(encoding="utf-8") == schema.markdown()


@pytest.mark.parametrize("name, kind, value, message", [
    ("reg_port", schema.I32, "18443", r"reg_port must be an integer \(dynreg reads it as i32\), not text"),
    ("tls", schema.I32, True, r"tls must be an integer .* not true/false"),
    ("mqtt_port", schema.I32, 2 ** 31, r"mqtt_port does not fit in an i32"),
    ("prod_secret", schema.TEXT, 12345678, r"prod_secret must be text .* not a number"),
    ("ca", schema.BINARY, "ca.pem", r'ca must be \{"file": "path"\}'),
    ("barcode", schema.TEXT, "x" * 4097, r"barcode is 4097 bytes; the device reads blobs up to 4096"),
])
def test_check_value_names_the_key_never_the_value(name, kind, value, message):
    with pytest.raises(schema.SchemaError, match=message) as info:
        schema.check_value(name, kind, value)
    assert str(value) not in str(info.value) or len(str(value)) < 5


def test_declared_keys_and_labels():
    assert schema.declared("mqtt_port") == ("mqtt_port", schema.I32)
    assert schema.declared("my_key:i32") == ("my_key", schema.I32)
    assert schema.declared("ca:file") == ("ca", schema.BINARY)
    with pytest.raises(schema.SchemaError, match=r"key 'mqtt_prot' is not one dynreg reads \(did you mean "
                                                 r"'mqtt_port'\?\)"):
        schema.declared("mqtt_prot")
    with pytest.raises(schema.SchemaError, match=r"dynreg reads it as i32"):
        schema.declared("reg_port:blob")
    # a secret in the header row (the real header lost) is named by its column only
    with pytest.raises(schema.SchemaError, match=r"^key #3 is 24 bytes") as info:
        schema.declared("DWHXR7Ik6m6IS6ifKTQMMZUA", 3)
    assert "DWHX" not in str(info.value)
