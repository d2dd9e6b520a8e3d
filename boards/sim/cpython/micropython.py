"""CPython stand-in for MicroPython's micropython module (const only)."""


def const(value):
    """Compile-time constant on MicroPython; the value itself here."""
    return value
