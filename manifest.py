# Freeze dynreg into a custom MicroPython firmware (docs/factory.md, "Freezing dynreg into the firmware").
# From a micropython checkout (ports/esp32, ESP-IDF set up):
#   make BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/this/repo/manifest.py
# Relative paths below are relative to this file.

# Everything the stock firmware freezes for the board (umqtt.simple among it).
include("$(PORT_DIR)/boards/manifest.py")

# firmware/lib/dynreg/*.py -> the frozen package "dynreg".
package("dynreg", base_path="firmware/lib", opt=3)  # opt=3 as make deploy: no line numbers

# dynreg's one dependency (from micropython-lib; already in the port's manifest on ESP32).
require("umqtt.simple")
