"""Footprint and speed of dynreg, measured on this PC (`make bench`).

Runs the firmware under the MicroPython unix port, precompiled by mpy-cross, on the simulated
board (python -m tools.sim, its command line only) against a cloud emulator of its own (ephemeral ports,
state in OUT/cloud), and prints one table, also written as JSON (OUT/bench.json) and Markdown
(OUT/bench.md). OUT is build/bench unless --out says otherwise.

1. RAM: the smallest `micropython -X heapsize=N` (the sim runner's --heapsize) under which the whole
   flow (register -> store -> reset -> login -> first publish; both boots at that heap) succeeds,
   per platform, by bisection. Each probe is a fresh board with a fresh device name; success is
   exit 0 with "report 1 sent" in the output. Beside it, in the same run: the floor any MQTT
   device pays (OUT/floor/main.py: join Wi-Fi, set the clock, umqtt.simple over TLS verified
   against the CA in NVS, connect with the emulator's console login, one publish), and the
   interpreter alone (empty main.py). Every image runs the board's shims precompiled and a
   dict-backed esp32.NVS in place of the simulator's (tools/bench/images.py).
2. Flash: .mpy bytes of every module, and of the modules each platform really imports, recorded
   by a main.py wrapper (OUT/probe) that prints sorted(sys.modules) when the registration boot
   resets and after the login boot's dynreg.connect(); against umqtt.simple's own .mpy.
3. Round trips of each registration, read from the emulator's devices.json ("round_trips"),
   against the minimum: Tencent 1 HTTP exchange, UCloud and Protco 2.
4. Time from power-on to the first publish, median of --runs runs, read from the runner's output
   as it arrives: from "[sim] boot 1" (the runner starts the interpreter) to "report 1 sent",
   through registration, reset and login; and from "[sim] boot 2" (the login boot). The boards
   run with the network already up (no wifi_ssid), as the SDK on a PC. In the same run, the
   official Tencent SDK for Python (tencent-iot-device, requirements-nodeps.txt: make setup installs
   it with --no-deps, as the bench does when it is missing; it pins pycrypto, which no longer builds) registers,
   logs in and publishes on CPython against the same emulator, timed from its process start.
   Its hosts (ap-guangzhou.gateway.tencentdevices.com, <pid>.iotcloud.tencentdevices.com, ports
   443/8883) are mapped to the emulator by patching socket.getaddrinfo in the harness process;
   the emulator's certificate names them. See sdk.sdk_harness() for what else the harness adapts.
5. Fleet: --fleet devices (CPython threads in one process, each running the firmware's own
   dynreg.tencent_reg.register() over the board's shims) register at once against a fresh emulator
   after a simulated power cut, without and with start-up jitter (the firmware's jitter_ms setting and
   dynreg.flow.jitter_ms(): a random wait of 0..jitter_ms before the first attempt; --jitter-ms,
   default 30 s), retrying with dynreg.flow.backoff_ms() and the firmware's defaults (2 s base,
   300 s cap) until --fleet-deadline seconds after power-on.
6. Reconnect in place (tools/bench/reconnect.py): a registered Tencent board's connection dropped 100
   times (--quick: 10) by a proxy; the time to "online again" in the same process against a reboot
   and login of the same board, and the heap in use after the first and the last reconnect.

    .venv/bin/python -m tools.bench [--quick] [--out DIR] [--runs N] [--fleet N] [--jitter-ms MS]
        [--platforms tencent,ucloud,protco] [--no-sdk] [--no-fleet]

--quick (used by host_tests/test_bench_quick.py): coarse bisection (8 KiB), one timed run, no SDK,
no fleet. Exit status 0 when every measurement ran (whether targets are met is in the table), 1
when one failed.
"""
