# The application: get a logged-in device (registering on first boot), then report telemetry.
import time

import machine

import dynreg

dev = dynreg.connect()
t0 = time.ticks_ms()
try:
    for n in range(1, 4):
        dev.report({"uptime_ms": time.ticks_diff(time.ticks_ms(), t0), "n": n})
        dynreg.log("report %d sent" % n)
        dev.poll(500)  # let the cloud's reply arrive
    dev.close()
except OSError as e:  # the connection was lost after login: start over with a fresh boot
    dynreg.log("connection lost (%s); resetting in 5 s" % e)
    time.sleep(5)
    machine.reset()
dynreg.log("done")
