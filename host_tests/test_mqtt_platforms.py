"""UCloud UIoT Core and Protco rlink v2 end to end: registration over MQTT in two round trips, the
login after it, and every refusal docs/platforms/ucloud.md and protco.md describe — under MicroPython and CPython."""

import pytest

from host_tests.conftest import mqtt_settings


def name(interp, what):
    return "%s-%s" % (what, interp)


def record(cloud, platform, pid, dn):
    return cloud.devices()[platform]["%s/%s" % (pid, dn)]


# -- UCloud ----------------------------------------------------------------------------------

UC = "simucloudkey0001"


def test_ucloud_registers_in_two_round_trips_then_logs_in(cloud, board, interp):
    dn = name(interp, "uc-first")
    run = board(mqtt_settings(cloud, "ucloud", UC, dn))
    assert run.rc == 0 and run.boots == 2, run
    for line in ("registering ucloud device", "registered: stored dev_secret",
                 "mqtt: connecting to mqtts://localhost", "mqtt: logged in", "report 3 sent"):
        assert line in run.out, (line, run)
    rec = record(cloud, "ucloud", UC, dn)
    assert rec["round_trips"] == 2 and rec["activated"] and rec["registrations"] == 1
    again = board(mqtt_settings(cloud, "ucloud", UC, dn), fresh=False)
    assert again.rc == 0 and again.boots == 1 and "registering" not in again.out, again


def test_ucloud_wrong_product_secret(cloud, board, interp):
    run = board(mqtt_settings(cloud, "ucloud", UC, name(interp, "uc-wrong"), prod_secret="x" * 16))
    assert run.rc == 1 and "broker refused the login (CONNACK return code 5)" in run.out, run


def test_ucloud_not_whitelisted(cloud, board, interp):
    run = board(mqtt_settings(cloud, "ucloud", "simucloudwl00001", name(interp, "uc-notlisted")))
    assert run.rc == 1 and "CONNACK return code 5" in run.out, run
    assert "not on the product's pre-authentication whitelist" in cloud.log()


def test_ucloud_already_activated(cloud, board, interp):
    s = mqtt_settings(cloud, "ucloud", UC, name(interp, "uc-active"))
    assert board(s).rc == 0
    run = board(s)  # factory NVS again, but the cloud has seen the device log in
    assert run.rc == 1 and "registration refused: RetCode 1" in run.out, run


@pytest.mark.parametrize("pid, expect", [("simucloudrc70001", "registration refused: RetCode 7"),
                                         ("simucloudnum0001", None)])
def test_ucloud_retcodes(cloud, board, interp, pid, expect):
    run = board(mqtt_settings(cloud, "ucloud", pid, name(interp, "uc-rc")))
    if expect:
        assert run.rc == 1 and expect in run.out, run
    else:  # RetCode 0 as a number is success too
        assert run.rc == 0, run


@pytest.mark.parametrize("platform, pid", [("ucloud", "simucloudmute001"), ("protco", "simprotcomute1")])
def test_reply_never_comes(cloud, board, interp, platform, pid):
    run = board(mqtt_settings(cloud, platform, pid, name(interp, platform[:2] + "-mute")))
    assert run.rc == 1 and "no registration reply within 5000 ms" in run.out, run


@pytest.mark.parametrize("platform, pid", [("ucloud", "simucloudother01"), ("protco", "simprotcoother")])
def test_reply_for_another_request_is_ignored(cloud, board, interp, platform, pid):
    run = board(mqtt_settings(cloud, platform, pid, name(interp, platform[:2] + "-other")))
    assert run.rc == 0 and "ignoring a reply for another request" in run.out, run


# -- Protco ----------------------------------------------------------------------------------

PC = "simprotcokey01"


@pytest.mark.parametrize("method", ["hmacSha256", "hmacSha1"])
def test_protco_registers_logs_in_and_answers_commands(cloud, board, interp, method):
    dn = name(interp, "pc-" + method)
    run = board(mqtt_settings(cloud, "protco", PC, dn, sign_method=method))
    assert run.rc == 0 and run.boots == 2, run
    for line in ("registering protco device", "stored dev_pid, dev_uuid, dev_secret",
                 "mqtt: connecting to mqtts://localhost", "as rlink_rn01", "protco: command ping -> res 0",
                 "protco: command property_set -> res 0", "report 3 sent"):
        assert line in run.out, (line, run)
    rec = record(cloud, "protco", PC, dn)
    assert rec["round_trips"] == 2 and rec["activated"] and rec["commands_answered"] == 2


def test_protco_replace_pid_and_barcode(cloud, board, interp):
    dn = name(interp, "pc-replace")
    alt = "simprotcoalt01"
    run = board(mqtt_settings(cloud, "protco", PC, dn, replace_pid=alt, replace_sec=cloud.secret("protco", alt),
                              barcode="BC-" + interp))
    assert run.rc == 0, run
    rec = record(cloud, "protco", PC, dn)
    assert rec["pid"] == alt and rec["barcode"] == "BC-" + interp and rec["activated"]
    assert "mqtt login %s/%s ok" % (alt, rec["uuid"]) in cloud.log()


def test_protco_wrong_product_secret(cloud, board, interp):
    run = board(mqtt_settings(cloud, "protco", PC, name(interp, "pc-wrong"), prod_secret="0" * 32))
    assert run.rc == 1 and "CONNACK return code 5" in run.out, run


def test_protco_already_activated(cloud, board, interp):
    s = mqtt_settings(cloud, "protco", PC, name(interp, "pc-active"))
    assert board(s).rc == 0
    run = board(s)
    assert run.rc == 1 and "registration refused: res 17032 (device is bound)" in run.out, run


def test_protco_unknown_res(cloud, board, interp):
    run = board(mqtt_settings(cloud, "protco", "simprotcores01", name(interp, "pc-res")))
    assert run.rc == 1 and "registration refused: res 4242" in run.out, run
