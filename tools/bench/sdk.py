"""The official Tencent SDK for Python, timed against the same emulator (see sdk_harness)."""
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from tools.bench.common import PRODUCTS, REPO, SUCCESS, fresh_name, run_timed, say

SDK_PIN = REPO / "requirements-nodeps.txt"  # the SDK pins pycrypto, which no longer builds: --no-deps
SDK_DEPS = ("paho-mqtt", "pycryptodome")  # its real dependencies, pinned in requirements.txt
SDK_REG_HOST = "ap-guangzhou.gateway.tencentdevices.com"


def ensure_sdk():
    """Install the official SDK into this venv if missing: --no-deps (it pins pycrypto, which no longer
    builds), its real dependencies as pinned in requirements.txt. Returns None or why it is unavailable."""
    check = [sys.executable, "-c", "import explorer.explorer, paho.mqtt.client, Crypto.Cipher.AES"]
    if subprocess.run(check, capture_output=True).returncode == 0:
        return None
    lines = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    pins = [line for line in lines if line.split("==")[0].strip().lower() in SDK_DEPS]
    say("installing %s (--no-deps) and %s" % (SDK_PIN.name, ", ".join(pins)))
    for args in (pins, ["--no-deps", "-r", str(SDK_PIN)]):
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q"] + args, capture_output=True, text=True)
        if done.returncode != 0:
            return "pip install %s failed: %s" % (" ".join(args), done.stderr.strip()[-300:])
    if subprocess.run(check, capture_output=True).returncode != 0:
        return "the SDK does not import after installing it"
    return None

def run(out, emu):
    """One run of the SDK harness in a fresh CPython process, timed from its start."""
    name = fresh_name("sdk")
    spec = {"ports": emu.ports, "pid": PRODUCTS["tencent"], "secret": emu.secret("tencent", PRODUCTS["tencent"]),
            "name": name, "dir": str(out / "sdk" / name)}
    run = run_timed([sys.executable, "-m", "tools.bench", "--sdk-harness", json.dumps(spec)], 60)
    if not run.ok or run.at(r"^sdk: registered") is None:
        raise RuntimeError("SDK run failed:\n%s" % run.out[-3000:])
    return run

def sdk_harness(spec):
    """Run in its own process: the official SDK registers, logs in and publishes once.

    The SDK is used as published; only this process is adapted:
    - its hosts resolve to 127.0.0.1 and ports 443/8883 to the emulator's (socket.getaddrinfo);
    - its TLS context: Codec.Ssl.create_content() builds ssl.create_default_context(Purpose.CLIENT_AUTH),
      a *server* context since Python 3.10, with which no client connection can be made at all (on
      older Pythons it verified nothing); here it is a client context trusting the emulator's CA,
      with hostname checks (the emulator's certificate names Tencent's hosts);
    Nothing of its protocol is changed: it speaks MQTT 3.1 ("MQIsdp"), its default, which the emulator
    accepts as the cloud does (host_tests/test_cloud_emulator.py runs this harness as the SDK check).
    """
    import socket
    import ssl

    ports = spec["ports"]
    pid, name = spec["pid"], spec["name"]
    where = {SDK_REG_HOST: ports["https"], pid + ".iotcloud.tencentdevices.com": ports["mqtts"]}
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host in where:
            return real_getaddrinfo("127.0.0.1", where[host], *args, **kwargs)
        return real_getaddrinfo(host, port, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo
    from hub.utils.codec import Codec

    ca = Path(ports["ca"]).read_text()
    Codec.Ssl.create_content = lambda self, cadata=None: ssl.create_default_context(cadata=ca)
    from explorer.explorer import QcloudExplorer

    os.makedirs(spec["dir"], exist_ok=True)
    device_file = os.path.join(spec["dir"], "device_info.json")
    with open(device_file, "w", encoding="utf-8") as f:
        json.dump({"auth_mode": "KEY", "productId": pid, "productSecret": spec["secret"], "deviceName": name,
                   "key_deviceinfo": {"deviceSecret": "YOUR_DEVICE_SECRET"}, "region": "china",
                   "cert_deviceinfo": {"devCaFile": "", "devCertFile": "", "devPrivateKeyFile": ""}}, f)
    code = 1
    try:
        qcloud = QcloudExplorer(device_file=device_file, tls=True)
        rc, _ = qcloud.dynregDevice()
        if rc != 0:
            print("sdk: registration failed", flush=True)
            return 1
        print("sdk: registered", flush=True)
        connected = threading.Event()
        nothing = lambda *args: None  # noqa: E731
        qcloud.registerMqttCallback(lambda *args: connected.set(), nothing, nothing, nothing, nothing, nothing)
        qcloud.connect()
        if not connected.wait(10):
            print("sdk: no MQTT connection", flush=True)
            return 1
        qcloud.subscribe("$thing/down/property/%s/%s" % (pid, name), 0)
        rc, _ = qcloud.publish("$thing/up/property/%s/%s" % (pid, name),
                               {"method": "report", "clientToken": "sdk-1", "params": {"n": 1}}, 0)
        print(SUCCESS if rc == 0 else "sdk: publish failed", flush=True)
        code = 0 if rc == 0 else 1
        time.sleep(0.2)  # let paho's thread write it before the process ends
        qcloud.disconnect()
        time.sleep(0.1)
    finally:
        sys.stdout.flush()
        os._exit(code)  # the SDK's worker threads are not daemons
