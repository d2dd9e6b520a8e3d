"""Tencent IoT Explorer end to end: the firmware on the simulated board against the emulator,
under the MicroPython unix port and CPython (the `interp` fixture)."""

import re

from host_tests.conftest import INTERPS, run_on_device, tencent_settings

PSK, CERT, OFF = "SIMPSK0001", "SIMCERT001", "SIMOFF0001"


def name(interp, what):
    return "%s-%s" % (what, interp)


def test_first_boot_registers_then_second_boot_logs_in(cloud, board, interp):
    dn = name(interp, "first")
    run = board(tencent_settings(cloud, PSK, dn))
    assert run.rc == 0, run
    assert run.boots == 2, run
    out = run.out
    # the time reply arrives while the application polls: connect() does not wait for it
    order = ["no device secret in NVS", "tencent: POST https://localhost", "registered: stored dev_secret",
             "[sim] machine.reset()", "mqtt: connecting to mqtts://localhost", "mqtt: logged in",
             "report 1 sent, acknowledged", "report 3 sent, acknowledged", "done"]
    positions = [out.find(s) for s in order]
    assert -1 not in positions and positions == sorted(positions), run
    assert out.find("time synced over $sys/operation") > out.find("mqtt: logged in"), run
    rec = cloud.devices()["tencent"][PSK + "/" + dn]
    assert rec["activated"] and rec["registrations"] == 1

    again = board(tencent_settings(cloud, PSK, dn), fresh=False)
    assert again.rc == 0 and again.boots == 1, again
    assert "no device secret" not in again.out and "mqtt: logged in" in again.out
    assert cloud.devices()["tencent"][PSK + "/" + dn]["registrations"] == 1


def test_device_name_from_mac(cloud, board, interp):
    s = tencent_settings(cloud, PSK, None)
    del s["dev_name"]
    mac = "240ac40000%02x" % INTERPS.index(interp)
    run = board(s, mac=mac)
    assert run.rc == 0, run
    assert "registering tencent device '%s'" % mac in run.out


def test_certificate_product(cloud, board, interp):
    dn = name(interp, "cert")
    run = board(tencent_settings(cloud, CERT, dn))
    assert run.rc == 0, run
    assert "stored dev_key, dev_cert" in run.out, run
    assert "mqtt login %s/%s ok (cert" % (CERT, dn) in cloud.log()  # the TLS client certificate logged it in
    assert cloud.devices()["tencent"][CERT + "/" + dn]["activated"]


def test_hmacsha1(cloud, board, interp):
    dn = name(interp, "sha1")
    run = board(tencent_settings(cloud, PSK, dn, sign_method="hmacsha1"))
    assert run.rc == 0 and "mqtt login %s/%s ok (psk, hmacsha1" % (PSK, dn) in cloud.log(), run


def test_legacy_protocol(cloud, board, interp):
    run = board(tencent_settings(cloud, PSK, name(interp, "legacy"), reg_api="legacy"))
    assert run.rc == 0 and "/register/dev" in run.out, run


def test_plain_http_and_tcp_when_configured(cloud, board, interp):
    s = tencent_settings(cloud, PSK, name(interp, "plain"), tls=0, reg_port=cloud.ports["http"],
                         mqtt_port=cloud.ports["mqtt"])
    del s["ca"]
    run = board(s)
    assert run.rc == 0 and "POST http://localhost" in run.out, run


def test_reregistration_allowed_until_activation(cloud, board, interp, tmp_path):
    dn = name(interp, "rereg")
    # Power lost after registering, before the first login: the cloud has the device, not activated.
    s = tencent_settings(cloud, PSK, dn)
    run = board(s, max_boots=1)
    assert run.rc == 3 and "registered: stored dev_secret" in run.out, run
    assert not cloud.devices()["tencent"][PSK + "/" + dn]["activated"]
    # The board comes back with factory NVS (say, re-flashed): registering again is allowed.
    run = board(s)
    assert run.rc == 0, run
    rec = cloud.devices()["tencent"][PSK + "/" + dn]
    assert rec["registrations"] == 2 and rec["activated"]
    # Once activated, registration is refused with the cloud's Code and Message.
    run = board(s)
    assert run.rc == 1, run
    assert "registration refused: FailedOperation.DeviceAlreadyActivated" in run.out, run
    assert "giving up after 1 attempts" in run.out


def test_pre_create_mode(cloud, board, interp):
    unknown = board(tencent_settings(cloud, "TSTPRE0001", name(interp, "unknown")))
    assert unknown.rc == 1 and "Pre create mode: device not exists" in unknown.out, unknown
    known = board(tencent_settings(cloud, "TSTPRE0001", "pre-" + interp))
    assert known.rc == 0, known


def test_registration_switched_off(cloud, board, interp):
    run = board(tencent_settings(cloud, OFF, name(interp, "off")))
    assert run.rc == 1 and "Not support dynamic device register" in run.out, run


def test_wrong_product_secret(cloud, board, interp):
    run = board(tencent_settings(cloud, PSK, name(interp, "wrongsecret"), prod_secret="X" * 24))
    assert run.rc == 1 and "AuthFailure.SignatureFailure" in run.out, run
    assert "registered: stored" not in run.out


def test_retries_with_backoff_then_gives_up(cloud, board, interp):
    run = board(tencent_settings(cloud, OFF, name(interp, "retry"), max_tries=3, retry_ms=50, jitter_ms=200))
    assert run.rc == 1, run
    assert run.out.count("retrying in") == 2 and "giving up after 3 attempts" in run.out, run
    waits = [int(w) for w in re.findall(r"start-up jitter: waiting (\d+) ms", run.out)]
    assert len(waits) == 1 and 0 <= waits[0] <= 200, run


def test_server_certificate_from_another_ca_is_refused(cloud, board, interp, tmp_path):
    from tools.cloud import certs

    other = tmp_path / "other"
    other.mkdir()
    certs.Pki(str(other)).ensure()
    s = tencent_settings(cloud, PSK, name(interp, "otherca"), ca={"file": str(other / "ca.pem")})
    run = board(s)
    assert run.rc == 1 and "registered: stored" not in run.out, run


def test_both_umqtt_releases(cloud, board, interp):
    run = board(tencent_settings(cloud, PSK, name(interp, "umqtt134")), umqtt="legacy")
    assert run.rc == 0, run


def test_forget_product_secret_after_first_login(cloud, board, interp, tmp_path):
    s = tencent_settings(cloud, PSK, name(interp, "forget"), forget_prod=1)
    run = board(s)
    assert run.rc == 0 and "product secret erased from NVS" in run.out, run
    nvs = next((tmp_path / "board").glob("nvs.*"))
    out = run_on_device(interp, tmp_path, """
from dynreg.store import Store
st = Store()
print(st.get("prod_secret") is None, st.get("dev_secret") is not None)
""", nvs=nvs)
    assert out.split() == ["True", "True"]
    again = board(s, fresh=False)  # still logs in with its own secret
    assert again.rc == 0 and "mqtt: logged in" in again.out and "erased" not in again.out, again
