"""ussl alias of ssl: MicroPython 1.29 dropped ussl, umqtt.simple 1.3.4 imports it."""
from ssl import *  # noqa: F401,F403
