# bench: reconnects in place. The bench drops the board's connection (its proxy closes both sides);
# each time the board is online again it prints the count and, under MicroPython, the heap in use
# after a collection.
import gc

import dynreg

dev = dynreg.connect()
mem = getattr(gc, "mem_alloc", lambda: 0)


def state(online):
    if online:
        gc.collect()
        print("bench-online %d %d" % (dev.reconnects, mem()))


dev.on_state = state
state(True)
while True:
    dev.poll(1000)
