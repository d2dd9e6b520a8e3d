"""python -m tools.cloud: run the cloud emulator in the foreground until SIGINT/SIGTERM."""

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import sys

from .broker import CloudBroker, broker_config
from .certs import Pki
from .http import start_servers
from ..platforms import PLATFORMS
from .platform import ConsolePlatform, log
from .registry import Console, DeviceStore, load_registry
from .state import CONSOLE_FILE, console_password

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CONSOLE_ENV = "DYNREG_CONSOLE_PASSWORD"


def parse_args(argv=None):
    """Command line; port 0 means "any free port" (see ports.json for the ones taken)."""
    p = argparse.ArgumentParser(prog="python -m tools.cloud", description=__doc__)
    p.add_argument("--state", default=os.path.join(REPO, "build", "cloud"),
                   help="state directory: certificates, devices.json, ports.json (default build/cloud)")
    p.add_argument("--registry", default=os.path.join(HERE, "registry.json"), help="products file")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for a board on the LAN)")
    p.add_argument("--http-port", type=int, default=8080)
    p.add_argument("--https-port", type=int, default=8443)
    p.add_argument("--mqtt-port", type=int, default=1883)
    p.add_argument("--mqtts-port", type=int, default=8883)
    p.add_argument("--ts-window", type=int, default=600,
                   help="accepted registration timestamp skew in seconds (0 = no check)")
    p.add_argument("--probe-delay-ms", type=int, default=20,
                   help="hold back the SUBACK of MQTT registration reply topics by this much, so that the "
                        "round-trip count is exact: a pipelined PUBLISH arrives well within it (0 = off)")
    p.add_argument("--cert-name", action="append", default=[],
                   help="extra name or IP in the server certificate (repeatable), e.g. this PC's LAN IP")
    p.add_argument("--connect-timeout", type=float, default=10,
                   help="close an MQTT connection whose TLS handshake or CONNECT takes longer (seconds)")
    p.add_argument("--console-password", default=os.environ.get(CONSOLE_ENV),
                   help=f"the console login's password (default: ${CONSOLE_ENV}, else the state directory's "
                        f"{CONSOLE_FILE}, else a new one, written there 0600)")
    p.add_argument("--console-over-tcp", action="store_true",
                   help="let other machines log in to the console over plain TCP (default: TLS port only)")
    for name in PLATFORMS:  # a platform's own options (tools/cloud/<platform>.py add_arguments)
        add = getattr(importlib.import_module(__package__ + "." + name), "add_arguments", None)
        if add:
            add(p)
    return p.parse_args(argv)


def _write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


async def _serve(args, platforms, pki, servers, ports_file):
    broker = CloudBroker(broker_config(args.host, args.mqtt_port, args.mqtts_port,
                                       pki.server_pem, pki.server_key, pki.ca_pem), platforms,
                         probe_delay=args.probe_delay_ms / 1000, connect_timeout=args.connect_timeout)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ports = {"http": servers[0].server_address[1], "https": servers[1].server_address[1],
             "mqtt": broker.bound_port("default"), "mqtts": broker.bound_port("tls"), "ca": pki.ca_pem}
    log(f"registration http://{args.host}:{ports['http']} https://{args.host}:{ports['https']}")
    log(f"mqtt tcp://{args.host}:{ports['mqtt']} tls://{args.host}:{ports['mqtts']}")
    _write_json(ports_file, ports)
    log(f"ready ({ports_file})")
    await stop.wait()
    log("stopping")
    await broker.shutdown()


def _console(registry, state, given):
    """The console login (registry.Console) or None. A new password is shown once, on a terminal only."""
    if not registry.console:
        return None
    password, generated = console_password(state, given)
    where = os.path.join(state, CONSOLE_FILE)
    if generated and sys.stdout.isatty():
        print(f"console login {registry.console!r}, password {password} (shown once; kept in {where})", flush=True)
    else:
        log(f"console login {registry.console!r}: its password is in {where}")
    return Console(registry.console, password)


def main(argv=None):
    """Start everything, write ports.json when ready, run until a signal."""
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stdout, level=logging.WARNING,
                        format="cloud: %(name)s %(levelname)s: %(message)s")
    state = os.path.abspath(args.state)
    os.makedirs(state, exist_ok=True)
    ports_file = os.path.join(state, "ports.json")
    if os.path.exists(ports_file):
        os.remove(ports_file)  # a stale file must not announce a dead emulator as ready
    log(f"state {state}")
    try:
        registry = load_registry(args.registry)
    except (OSError, ValueError) as e:
        log(f"cannot use registry {args.registry}: {e}")
        return 2
    pki = Pki(state)
    for made in pki.ensure(args.cert_name):
        log(f"generated {made}")
    store = DeviceStore(os.path.join(state, "devices.json"))
    products = registry.products
    # one module per platform, tools/cloud/<platform>.py, each with emulate() (the firmware's list)
    try:  # a platform checks the options only it reads (ValueError)
        platforms = [ConsolePlatform(_console(registry, state, args.console_password), args.console_over_tcp)] + [
            importlib.import_module(__package__ + "." + name).emulate(products.get(name, {}), store, pki, args)
            for name in PLATFORMS]
    except ValueError as e:
        log(f"cannot use registry {args.registry}: {e}")
        return 2
    routes = {}
    for platform in platforms:
        routes.update(platform.http_routes())
    summary = ", ".join(f"{name} {len(found)} products" for name, found in products.items())
    log(f"registry {args.registry}: {summary}")
    servers = start_servers(args.host, args.http_port, args.https_port, routes, pki.server_pem, pki.server_key)
    try:
        asyncio.run(_serve(args, platforms, pki, servers, ports_file))
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
        if os.path.exists(ports_file):
            os.remove(ports_file)
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
