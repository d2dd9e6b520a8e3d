# bench: the modules each boot imports (replaces the example application)
import sys
import machine


def _modules(boot):
    print("bench-modules %s %s" % (boot, " ".join(sorted(sys.modules))))


_reset = machine.reset


def _reset_after_listing():
    _modules("registration")
    _reset()


machine.reset = _reset_after_listing
import dynreg

dev = dynreg.connect()
dev.report({"n": 1})
dev.poll(500)  # the cloud's reply, and any module the platform loads only when one arrives
_modules("login")
import umqtt.simple

print("bench-umqtt-file %s" % umqtt.simple.__file__)
dev.close()
