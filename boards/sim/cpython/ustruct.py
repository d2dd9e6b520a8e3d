"""CPython stand-in for MicroPython's ustruct (an alias of struct)."""
from struct import *  # noqa: F401,F403
