"""One command from a blank board to a logged-in device against the cloud emulator on this PC (`make hil`).

    python -m tools.hil --board ESP32_GENERIC --port /dev/ttyUSB0 [--platform tencent]
        [--firmware FW.bin] [--force] [--partition ota] [--lan-ip IP] [--state build/hil]
    python -m tools.hil --board sim ...      the simulated board (python -m tools.sim) in place of a serial port

Steps (a failure prints FAIL, the step and the last console lines; exit 1):
1. LAN address: this PC's address on the network the board joins (--lan-ip, else the source address
   of the default route, found by a UDP connect() that sends nothing).
2. cloud emulator: python -m tools.cloud bound to that address, its server certificate naming it
   (--cert-name), registration on --reg-port (8443) and MQTT over TLS on --mqtt-port (8883), state in
   STATE/cloud (kept: a board that registered before stays known; --force forgets every device
   there, so that a board flashed afresh may register again). The console password is made there
   on the first run (console.password) and shown once, on a terminal only.
3. settings: STATE/settings.json (0600): the platform's key product (the registry's first one),
   Wi-Fi from $WIFI_SSID / $WIFI_PASS (asked on the terminal when missing), the emulator's address,
   ports and CA.
4. provision: the factory NVS image STATE/nvs.bin (0600), checked as tools/factory/provision.py checks a
   batch, sized for the board's NVS partition.
5. flash: tools/factory/flash.py flash (what `make flash` does): NVS backup, MicroPython (--firmware, if
   given), the NVS image unless the board already holds a device identity (kept unless --force),
   lib/dynreg, boot.py, main.py. The simulated board keeps its identity the same way. A kept
   identity keeps the board's other settings too: the emulator must be where they point (same
   address and ports), else --force.
6. boot and login: watches the board's console (targets.py: the serial port, soft-reset first, or
   the simulated board's output) until the device logs "mqtt: logged in" and the emulator has
   logged the login: PASS; FAIL when the board stops or --timeout passes first.

Secrets: the settings and image files are the owner's only; nothing printed carries a secret (the
device's own log carries none; the console password only as described above).
"""
