"""ThingsBoard end to end under MicroPython and CPython: provisioning in two round trips (ACCESS_TOKEN and
MQTT_BASIC), the login after it, the server-side RPC answered, every refusal docs/platforms/thingsboard.md
describes, the token login check and power cuts at every step of a provisioning."""

import re

import pytest

from host_tests.conftest import INTERPS, mqtt_settings
from host_tests.faultproxy import FaultProxy
from host_tests.test_faults import RETRY, Board, activated_once, record
from host_tests.test_hostile import HostileServer, pki, publish, read_packet  # noqa: F401 (pki: a fixture)
from host_tests.test_hostile import settings as settings_of_hostile
from tools.cloud import registry as cloud_registry

KEY = "simtbprovkey0001"   # allow to create new devices
PRE = "simtbprekey00001"   # check for pre-provisioned devices
NOT_FOUND = "registration refused: NOT_FOUND (Provision data was not found!)"
FAILURE = "registration refused: FAILURE (Failed to provision device!)"


def name(interp, what):
    return "tb-%s-%s" % (what, interp)


def settings(cloud, pid, dn, **extra):
    return mqtt_settings(cloud, "thingsboard", pid, dn, **extra)


def short(cloud, pid, dn, **extra):
    """Settings of a run that only needs the login: one report (no second waiting a second)."""
    return settings(cloud, pid, dn, report_count=1, **extra)


def rec(cloud, pid, dn):
    return cloud.devices()["thingsboard"]["%s/%s" % (pid, dn)]


@pytest.mark.parametrize("cred", ["ACCESS_TOKEN", "MQTT_BASIC"])
def test_provisions_in_two_round_trips_logs_in_and_answers_the_ping(cloud, board, interp, cred):
    dn = name(interp, cred.lower().replace("_", ""))
    s = settings(cloud, KEY, dn, tb_cred=cred)
    run = board(s)
    assert run.rc == 0 and run.boots == 2, run
    stored = "dev_secret" if cred == "ACCESS_TOKEN" else "tb_client, tb_user, dev_secret"
    for line in ("registering thingsboard device", "registered: stored %s in NVS" % stored,
                 "mqtt: connecting to mqtts://localhost", "as %s" % dn, "mqtt: logged in",
                 "thingsboard: rpc ping answered", "report 3 sent, acknowledged"):
        assert line in run.out, (line, run)
    r = rec(cloud, KEY, dn)
    assert r["round_trips"] == 2 and r["activated"] and r["registrations"] == 1 and r["rpc_answered"] == 1, r
    assert ("basic_id" in r) == (cred == "MQTT_BASIC") and len(r["secret"]) == 20
    assert "thingsboard provisioning %s ok (%s, provisioning 1) (2 round trips)" % (dn, cred) in cloud.log()
    again = board(s, fresh=False)  # the second boot goes straight to MQTT
    assert again.rc == 0 and again.boots == 1 and "registering" not in again.out, again
    assert rec(cloud, KEY, dn)["logins"] == 2


@pytest.mark.parametrize("case, expect", [
    ("wrong secret", NOT_FOUND), ("unknown key", NOT_FOUND), ("disabled", NOT_FOUND),
    ("not pre-provisioned", FAILURE), ("name taken", FAILURE), ("mute", "no registration reply within 5000 ms"),
    ("bad tb_cred", "NVS tb_cred is 'X509_CERTIFICATE', not ACCESS_TOKEN or MQTT_BASIC")])
def test_refusals(cloud, board, interp, case, expect):
    dn = name(interp, case.replace(" ", "-"))
    s = {"wrong secret": lambda: settings(cloud, KEY, dn, prod_secret="x" * 20),
         "unknown key": lambda: settings(cloud, KEY, dn, prod_id="simtbunknownkey1"),
         "disabled": lambda: settings(cloud, "simtboffkey00001", dn),
         "not pre-provisioned": lambda: settings(cloud, PRE, dn),
         # a pre-provisioned device's name: it exists in the tenant, so no other profile may create it
         "name taken": lambda: settings(cloud, KEY, "tb-pre-" + interp),
         "mute": lambda: settings(cloud, "simtbmutekey0001", dn),
         "bad tb_cred": lambda: settings(cloud, KEY, dn, tb_cred="X509_CERTIFICATE")}[case]()
    run = board(s)
    assert run.rc == 1 and expect in run.out and "logged in" not in run.out, run
    if case != "bad tb_cred":
        assert "connecting to mqtts://localhost" in run.out
        assert "tb_pending" not in run.out


def test_pre_provisioned_device_gets_its_own_token_each_time(cloud, board, interp):
    dn = "tb-pre-" + interp
    s = short(cloud, PRE, dn, tb_cred="MQTT_BASIC")
    run = board(s)
    assert run.rc == 0 and "stored dev_secret in NVS" in run.out, run  # its console token, not MQTT_BASIC
    token = rec(cloud, PRE, dn)["secret"]
    run = board(s)  # factory NVS again: ThingsBoard answers a pre-provisioned device again, the same token
    assert run.rc == 0 and run.boots == 2, run
    r = rec(cloud, PRE, dn)
    assert r["secret"] == token and r["registrations"] == 2 and r["logins"] == 2


def test_login_with_a_deleted_devices_token_is_refused(cloud, board, interp):
    dn = name(interp, "deleted")
    s = short(cloud, KEY, dn)
    assert board(s).rc == 0
    assert cloud_registry.forget_device(str(cloud.state / "devices.json"), "thingsboard", "%s/%s" % (KEY, dn))
    run = board(s, fresh=False)
    assert run.rc == 1 and "broker refused the login (CONNACK return code 5)" in run.out, run
    assert "unknown access token or MQTT_BASIC credentials" in cloud.log()


# -- power cuts ----------------------------------------------------------------------------------
# A provisioning writes tb_pending and commits (before the request), then the credentials, dev_secret
# and dev_id, and commits (a cut at a commit comes after it); the first login erases tb_pending. ThingsBoard refuses a second request for a name it created
# ("allow to create new devices"): a cut after the reply reached the device must still end logged in.

POWER = [("ACCESS_TOKEN", "before-request"), ("ACCESS_TOKEN", "nvs_write:1"), ("ACCESS_TOKEN", "nvs_commit:1"),
         ("ACCESS_TOKEN", "nvs_write:2"), ("ACCESS_TOKEN", "nvs_write:3"), ("ACCESS_TOKEN", "nvs_commit:2"),
         ("ACCESS_TOKEN", "first-login"), ("MQTT_BASIC", "nvs_write:3"), ("MQTT_BASIC", "nvs_write:4")]


@pytest.mark.parametrize("interp", INTERPS)
@pytest.mark.parametrize("cred, when", POWER, ids=["%s-%s" % c for c in POWER])
def test_power_cut(cloud, tmp_path, interp, cred, when):
    dn = "tb-pc-%s-%s-%s" % (cred[:3].lower(), re.sub(r"[:_]", "", when), interp[:2])
    case = record(dn, interp, 1)
    s = short(cloud, KEY, dn, tb_cred=cred, **dict(RETRY, max_tries=8))
    board = Board(cloud, tmp_path, interp, s)
    proxy = None
    if when == "before-request":  # the board's first bytes (its ClientHello) never reach the cloud
        proxy = FaultProxy(cloud.ports["mqtts"], [("cut_client", board.power_cut)])
    elif when == "first-login":  # the emulator activated the device; the CONNACK never reaches it
        proxy = FaultProxy(cloud.ports["mqtts"])
        proxy.plan = [("cut_server", activated_once(cloud, "thingsboard", "%s/%s" % (KEY, dn), []),
                       board.power_cut)] * 3
    if proxy:
        s["mqtt_port"] = proxy.port
    try:
        board.run(fault=None if proxy else when)
    finally:
        if proxy:
            proxy.close()
    assert "[sim] power cut" in board.out and board.rc == 0 and "mqtt: logged in" in board.out, board.out
    r = rec(cloud, KEY, dn)
    nvs = board.nvs()
    assert r["activated"] and nvs["dev_secret"].decode() == r["secret"] and not nvs.get("tb_pending"), (r, sorted(nvs))
    assert r["registrations"] == 1  # ThingsBoard created the device once
    # the reply was received but not stored: the next request is refused and the device uses what it sent
    lost_reply = when == "nvs_write:2" or cred == "MQTT_BASIC"
    assert ("using the credentials sent then" in board.out) == lost_reply, board.out
    if lost_reply:
        assert "refused: FAILURE: a device of that name exists already" in board.cloud_log
    case["passed"] = True


# -- the real server's provisioning session: no SUBACK ---------------------------------------------

def _no_suback(srv, conn):
    """As ThingsBoard's provisioning session: CONNACK, the SUBSCRIBE left unanswered, the reply to the PUBLISH."""
    read_packet(conn)  # CONNECT
    conn.sendall(b"\x20\x02\x00\x00")
    assert read_packet(conn)[0] == 0x82
    assert read_packet(conn)[0] & 0xF0 == 0x30
    conn.sendall(publish("/provision/response", '{"status":"SUCCESS","credentialsType":"ACCESS_TOKEN",'
                                                '"credentialsValue":"HostilePassword1"}'))


def _refuse_login(srv, conn):
    read_packet(conn)
    conn.sendall(b"\x20\x02\x00\x05")


def test_provisions_without_a_suback(board, interp, pki):
    srv = HostileServer(pki["ctx"], [{"serve": _no_suback}, {"serve": _refuse_login}])
    try:
        s = dict(settings_of_hostile("thingsboard", srv.port, pki["ca"], interp, 1), prod_id="hostiletbkey0001")
        run = board(s, max_boots=2)
    finally:
        srv.close()
    assert "registered: stored dev_secret in NVS" in run.out and run.boots == 2, run
    assert "broker refused the login (CONNACK return code 5)" in run.out, run  # boot 2 dialled the same server
