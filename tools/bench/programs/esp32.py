"""bench: esp32.NVS as cheap as the C module: a dict of values, JSON file DYNREG_BENCH_NVS (tools/bench/images.py)."""
import binascii
import json
import os

_NOT_FOUND = -4354
_INVALID_LENGTH = -4364
_path = os.getenv("DYNREG_BENCH_NVS")
_data = None


class NVS:
    def __init__(self, namespace):
        global _data
        if _data is None:
            with open(_path) as f:
                _data = json.load(f)
        self._ns = _data.setdefault(namespace, {})

    def _get(self, key, kind):
        v = self._ns.get(key)
        if v is None or v[0] != kind:
            raise OSError(_NOT_FOUND)
        return v[1]

    def get_i32(self, key):
        return self._get(key, "i32")

    def get_blob(self, key, buf):
        v = binascii.a2b_base64(self._get(key, "blob"))
        if len(v) > len(buf):
            raise OSError(_INVALID_LENGTH)
        buf[:len(v)] = v
        return len(v)

    def set_i32(self, key, value):
        self._ns[key] = ["i32", value]

    def set_blob(self, key, value):
        if isinstance(value, str):
            value = value.encode()
        self._ns[key] = ["blob", binascii.b2a_base64(value).decode().strip()]

    def erase_key(self, key):
        if self._ns.pop(key, None) is None:
            raise OSError(_NOT_FOUND)

    def commit(self):
        with open(_path, "w") as f:
            json.dump(_data, f)
