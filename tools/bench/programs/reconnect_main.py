# bench: reconnects in place. The bench drops the board's connection (its proxy closes both sides);
# after each login the board sends a QoS 1 report and, once it is acknowledged (the connection works:
# its SUBACK came first), prints "bench-ready N HEAP": N reconnects so far, HEAP the MicroPython heap
# in use after a collection.
import gc

import dynreg

dev = dynreg.connect()
mem = getattr(gc, "mem_alloc", lambda: 0)
ready = -1
while True:
    if dev.online and dev.reconnects != ready and dev.report({"n": dev.reconnects}, 1):
        ready = dev.reconnects
        gc.collect()
        print("bench-ready %d %d" % (ready, mem()))
    dev.poll(50)  # short: the report after a reconnect goes out soon
