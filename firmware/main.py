# The application: get a logged-in device (registering on first boot), then report telemetry.
import time

import dynreg

dev = dynreg.connect()
t0 = time.ticks_ms()
for n in range(1, 4):
    dev.report({"uptime_ms": time.ticks_diff(time.ticks_ms(), t0), "n": n})
    dynreg.log("report %d sent" % n)
    dev.poll(500)  # let the cloud's reply arrive
dev.close()
dynreg.log("done")
