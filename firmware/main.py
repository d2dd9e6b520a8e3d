# The application: get a logged-in device (registering on first boot), then report telemetry forever.
# dynreg keeps the connection up (keepalive, reconnect in place); whatever still escapes here is logged
# and the board resets after a back-off, so it never stops at the REPL.
import time

import machine

import dynreg

dev = dynreg.connect()  # a ConfigError, or giving up after NVS max_tries, stops the board on purpose
try:
    every = dev.st.int("report_s", 60) * 1000
    count = dev.st.int("report_count", 0)  # 0: forever
    n = 0
    while True:
        n += 1
        acked = dev.report({"uptime_s": time.ticks_ms() // 1000, "n": n}, 1)
        dynreg.log("report %d sent%s" % (n, ", acknowledged" if acked else "; not acknowledged"))
        if n == count:
            break
        dev.poll(every)  # replies, commands, keepalive and reconnects happen in here
    dev.close()
except BaseException as e:  # noqa: a field device must not end at the REPL
    from dynreg.flow import backoff_ms

    wait = backoff_ms(3, 2000, 8000)
    dynreg.log("application stopped (%s: %s); resetting in %d ms" % (type(e).__name__, dynreg.shown(e), wait))
    time.sleep_ms(wait)
    machine.reset()
dynreg.log("done")
