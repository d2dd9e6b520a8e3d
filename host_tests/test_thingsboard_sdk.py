"""ThingsBoard's official Python SDK (PyPI tb-mqtt-client, requirements-tbsdk.txt) against the emulator:
provisioning with TBDeviceMqttClient.provision(), then its device client logs in with the token it got
and sends telemetry. Only the host and port are the emulator's (its plain port: the SDK's provisioning
client turns TLS on for port 8883 only, and then without verifying the server). No protocol patch: the
SDK's device client speaks MQTT 5, which the emulator bridges to its 3.1.1 broker (tools/cloud/mqtt5.py).

The SDK lives in build/tbsdk (make setup), not in the venv: its `paho` 2.x package would replace the
paho-mqtt 1.6.1 other tests run on.
"""

import subprocess

from host_tests.conftest import PYTHON, REPO
from host_tests.secrets_scan import assert_clean

TBSDK = REPO / "build" / "tbsdk"
KEY = "simtbprovkey0001"

SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1])
from tb_device_mqtt import TBDeviceMqttClient, TBPublishInfo

host, port, key, secret, name = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
import paho.mqtt
print("SDK paho", paho.mqtt.__version__)
creds = TBDeviceMqttClient.provision(host, key, secret, port=port, device_name=name)
if not creds:
    print("PROVISIONING FAILED")
    sys.exit(1)
print("PROVISIONED", creds["status"], creds["credentialsType"])
client = TBDeviceMqttClient(host, port=port, username=creds["credentialsValue"])
client.connect()
info = client.send_telemetry({"temperature": 21.5})  # waits for the connection, then for the PUBACK
print("TELEMETRY", info.get() == TBPublishInfo.TB_ERR_SUCCESS)
client.disconnect()
"""


def test_tb_mqtt_client_provisions_and_logs_in(cloud):
    assert (TBSDK / "tb_device_mqtt.py").is_file(), "make setup installs tb-mqtt-client into build/tbsdk"
    name = "tb-sdk-device"
    secret = cloud.secret("thingsboard", KEY)
    proc = subprocess.run([PYTHON, "-c", SCRIPT, str(TBSDK), "127.0.0.1", str(cloud.ports["mqtt"]), KEY, secret,
                           name], capture_output=True, text=True, timeout=120, cwd=REPO)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for line in ("SDK paho 2.", "PROVISIONED SUCCESS ACCESS_TOKEN", "TELEMETRY True"):
        assert line in out, (line, out)
    rec = cloud.devices()["thingsboard"]["%s/%s" % (KEY, name)]
    assert rec["activated"] and rec["logins"] == 1 and rec["registrations"] == 1, rec
    log = cloud.log()
    assert "thingsboard provisioning %s ok (ACCESS_TOKEN, provisioning 1)" % name in log
    assert "mqtt login %s ok (thingsboard; device activated)" % name in log
    assert "thingsboard %s sent telemetry" % name in log
    assert_clean(out, cloud.secrets(), cloud.public(), derived=True, where="the SDK's output")
