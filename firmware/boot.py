# Runs first at every boot. dynreg's work is in main.py, so a failure there still leaves
# the REPL and mpremote usable for recovery.
import gc

gc.collect()
