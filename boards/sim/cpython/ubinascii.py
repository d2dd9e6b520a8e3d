"""CPython stand-in for MicroPython's ubinascii (an alias of binascii)."""
from binascii import *  # noqa: F401,F403
