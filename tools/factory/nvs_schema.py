"""The "dynreg" NVS namespace on the host side: every key, its type, whether it is secret, the limits.

One source for provision, sim, flash, the tests and docs/nvs-keys.md (`python -m
tools.factory.nvs_schema --doc` writes that page). The firmware keeps its own copy of
NULL_SECRETS (device code cannot import host code); host_tests/test_nvs_schema.py checks that
copy and every key the firmware reads against this module, so the two cannot drift.

Types, as the device reads them (MicroPython's esp32.NVS has only i32 and blob):
- TEXT    a UTF-8 blob; settings give a string, a CSV cell is the text itself;
- BINARY  a blob of bytes (DER certificates and keys); settings give {"file": path}, a CSV cell
          names the file (PEM converted to DER);
- I32     a signed 32-bit integer; settings give an int, a CSV cell a decimal or 0x-hex number.
SECRET keys are never shown by a tool: not in errors, not in `flash show`.
check_value() is the one type check for settings and batch files alike; its messages name the
key and never hold the value.
"""
import argparse
import difflib
import re
import sys

from tools.platforms import PLATFORMS  # the firmware's list (dynreg/flow.py)

NAMESPACE = "dynreg"
MAX_KEY_BYTES = 15  # ESP-IDF NVS_KEY_NAME_MAX_SIZE - 1
MAX_BLOB = 4096  # firmware/lib/dynreg/store.py grows its read buffer up to this
PARTITION_SIZE = 0x6000  # nvs of MicroPython's default partition table (boards/<BOARD>/board.json)
# Values of an identity key that mean "not registered yet" (Tencent's C and Python SDK sentinels);
# firmware/lib/dynreg/store.py NULL_SECRETS is the device's copy.
NULL_SECRETS = (b"", b"YOUR_DEVICE_SECRET", b"YOUR_IOT_PSK", b"YOUR_DEVICE_CERT_FILE_NAME",
                b"YOUR_DEVICE_PRIVATE_KEY_FILE_NAME")

TEXT, BINARY, I32 = "text", "binary", "i32"
FACTORY, REGISTRATION = "factory", "registration"


class Key:
    """One NVS key: name, type, secret-class, who writes it, default, meaning."""

    def __init__(self, name, kind, meaning, default="—", secret=False, written=FACTORY):
        self.name, self.kind, self.meaning, self.default = name, kind, meaning, default
        self.secret, self.written = secret, written

    @property
    def nvs_type(self):
        return "i32" if self.kind == I32 else "blob"


KEYS = (
    Key("platform", TEXT, "`tencent`, `ucloud`, `protco`, `aliyun`, `thingsboard`, `aws` or `azure`", "required"),
    Key("wifi_ssid", TEXT, "Wi-Fi network (none: the network is up already)"),
    Key("wifi_pass", TEXT, "Wi-Fi password", secret=True),
    Key("wifi_timeout_ms", I32, "how long a Wi-Fi join may take before the attempt fails and backs off", "20000"),
    Key("ca", BINARY, "DER of the CA that signs the cloud's server certificates (empty in a batch file or "
                      "settings: the platform's own, tools/factory/ca/, when the hosts are the platform's)",
        "required with TLS"),
    Key("tls", I32, "1: TLS, server verified against `ca` with `server_hostname`; 0: plain TCP (only if set)", "1"),
    Key("prod_id", TEXT, "Tencent ProductId / UCloud ProductSN / Protco pid / ThingsBoard provision device key / "
                         "AWS provisioning template name", "required"),
    Key("prod_secret", TEXT, "the product secret shared by the whole product line (ThingsBoard: the provision device secret)", "required to register",
        secret=True),
    Key("dev_name", TEXT, "device name / DeviceSN / Protco unique id / AWS claim client id and default SerialNumber", "hex of the Wi-Fi MAC"),
    Key("dev_secret", TEXT, "the device's own secret (Tencent psk, UCloud password, Protco secret, ThingsBoard access token "
                            "or MQTT_BASIC password); null = "
                            "register", secret=True, written=REGISTRATION),
    Key("dev_cert", BINARY, "Tencent certificate products, AWS: client certificate (DER)", secret=True,
        written=REGISTRATION),
    Key("dev_key", BINARY, "Tencent certificate products, AWS: client private key (DER)", secret=True,
        written=REGISTRATION),
    Key("dev_id", TEXT, "identity marker: the platform and device name the stored identity belongs to, written "
                        "after it; with it and no identity the NVS is damaged (no new registration)",
        written=REGISTRATION),
    Key("reg_host", TEXT, "Tencent / Aliyun HTTPS registration host; Azure: the DPS host (`mqtt_host` overrides it)",
        "`ap-guangzhou.gateway.tencentdevices.com`, Azure `global.azure-devices-provisioning.net`"),
    Key("reg_port", I32, "Tencent / Aliyun HTTPS registration port", "443 (80 plain)"),
    Key("reg_api", TEXT, "Tencent: `device` (`/device/register`) or `legacy` (`/register/dev`)", "`device`"),
    Key("reg_timeout_ms", I32, "total deadline of one registration exchange (ms), however slowly the server sends",
        "30000"),
    Key("sign_method", TEXT, "Tencent, Aliyun `hmacsha256`/`hmacsha1`; Protco `hmacSha256`/`hmacSha1`", "sha256"),
    Key("mqtt_host", TEXT, "MQTT broker (AWS: the account's endpoint, required)", "the platform's"),
    Key("mqtt_port", I32, "MQTT broker port", "8883 (1883 plain; Aliyun 1883)"),
    Key("keepalive_s", I32, "MQTT keepalive (seconds) in CONNECT; `poll()` pings when due. Tencent 1..900, UCloud "
                            "30..1200, Protco 1..65535, Aliyun 30..1200", "60"),
    Key("max_msg", I32, "largest MQTT packet read after login (bytes); a larger PUBLISH is skipped in 256-byte "
                        "pieces", "4096"),
    Key("ack_ms", I32, "how long `publish(qos=1)` waits for the PUBACK (ms)", "5000"),
    Key("login_ttl", I32, "Tencent MQTT login validity (seconds; expiry = now + ttl)", "3600"),
    Key("retry_ms", I32, "back-off base (ms)", "2000"),
    Key("retry_max_ms", I32, "back-off cap (ms)", "300000"),
    Key("max_tries", I32, "attempts before giving up (0 = never)", "0"),
    Key("jitter_ms", I32, "start-up jitter: wait a random 0..`jitter_ms` before the first attempt of each boot, so "
                          "a fleet that loses power together does not return in the same second", "0"),
    Key("forget_prod", I32, "1: erase `prod_secret` after the first successful login, so a board captured later "
                            "cannot reveal the secret of its whole product line (a lost device secret then needs "
                            "re-provisioning)", "0"),
    Key("report_s", I32, "example `main.py`: seconds between reports", "60"),
    Key("report_count", I32, "example `main.py`: reports before it disconnects and returns (0 = forever)", "0"),
    Key("region", TEXT, "UCloud region when `mqtt_host` is unset (`mqtt-<region>.iot.ucloud.cn`)", "`cn-sh2`"),
    Key("barcode", TEXT, "Protco: barcode sent with the registration"),
    Key("replace_pid", TEXT, "Protco: register under this other product (`replacePid`)"),
    Key("replace_sec", TEXT, "Protco: the secret of `replace_pid`", secret=True),
    Key("dev_uuid", TEXT, "Protco: the uuid the cloud assigned", written=REGISTRATION),
    Key("dev_pid", TEXT, "Protco: the pid the cloud assigned", written=REGISTRATION),
    Key("ali_reg", TEXT, "Aliyun registration: `https` (`/auth/register/device`), `mqtt` (pre-registered, "
                         "`/ext/register`) or `mqtt-nwl` (registration-free, `/ext/regnwl`)", "`https`"),
    Key("ali_region", TEXT, "Aliyun region of the default hosts (`iot-auth.<region>.aliyuncs.com`, "
                            "`<ProductKey>.iot-as-mqtt.<region>.aliyuncs.com`)", "`cn-shanghai`"),
    Key("instance_id", TEXT, "Aliyun instance id (new public or enterprise instances): MQTT host "
                             "`<id>.mqtt.iothub.aliyuncs.com`, `instanceId` in the MQTT registration"),
    Key("secure_mode", TEXT, "Aliyun MQTT registration `securemode`: `2` or `-2`", "`-2` with `instance_id`, else `2`"),
    Key("dev_client", TEXT, "Aliyun registration-free devices: the clientId the cloud assigned (its deviceToken "
                            "is `dev_secret`)", written=REGISTRATION),
    Key("tb_cred", TEXT, "ThingsBoard: credentials to provision, `ACCESS_TOKEN` (a random token) or `MQTT_BASIC` "
                         "(client id and user name = the device name, a random password), chosen by the device",
        "`ACCESS_TOKEN`"),
    Key("tb_pending", TEXT, "ThingsBoard: the token or password of a provisioning request sent, kept until its "
                            "reply is stored (a lost reply is then not a lockout); emptied after", secret=True,
        written=REGISTRATION),
    Key("tb_client", TEXT, "ThingsBoard MQTT_BASIC: the client id provisioned", written=REGISTRATION),
    Key("tb_user", TEXT, "ThingsBoard MQTT_BASIC: the user name provisioned", written=REGISTRATION),
    Key("claim_cert", BINARY, "AWS: the fleet provisioning claim certificate (DER), shared by the product line",
        "required to register", secret=True),
    Key("claim_key", BINARY, "AWS: the claim certificate's private key (DER); erased with `forget_prod`",
        "required to register", secret=True),
    Key("aws_params", TEXT, "AWS: the provisioning template's parameters, a JSON object of strings",
        "`{\"SerialNumber\": <dev_name>}`"),
    Key("aws_topic", TEXT, "AWS: telemetry topic, `{thing}` replaced by the thing name", "`dt/{thing}/telemetry`"),
    Key("thing_name", TEXT, "AWS: the thing name RegisterThing returned (the login's client id)",
        written=REGISTRATION),
    Key("token_ttl_s", I32, "Azure: lifetime of a SAS token (seconds, at least 2); the login is renewed at 3/4 of it",
        "3600"),
    Key("az_hub", TEXT, "Azure: the IoT hub DPS assigned (`assignedHub`)", written=REGISTRATION),
    Key("az_device", TEXT, "Azure: the device id DPS assigned (`deviceId`)", written=REGISTRATION),
)
BY_NAME = dict((k.name, k) for k in KEYS)
SECRET_KEYS = tuple(k.name for k in KEYS if k.secret)
IDENTITY_KEYS = ("dev_secret", "dev_cert", "dev_key")  # any one with a real value = registered
# The hosts each platform's devices dial by default, and the domain its own hosts are under.
PLATFORM_DOMAINS = {"tencent": ".tencentdevices.com", "ucloud": ".ucloud.cn", "protco": ".protco.in",
                    "aliyun": ".aliyuncs.com",
                    "thingsboard": ".thingsboard.cloud",
                    "aws": ".amazonaws.com",
                    "azure": (".azure-devices.net", ".azure-devices-provisioning.net")}


class SchemaError(ValueError):
    """A key or value that does not fit the schema; the message names the key, never the value."""


_SNAKE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)+")


def label(name, position=None):
    """How a message names a key: quoted if it is one dynreg reads or looks like a key (snake_case), else
    by its position only (a header row lost above the data makes a secret a "key")."""
    if name in BY_NAME or (isinstance(name, str) and _SNAKE.fullmatch(name)):
        return "key %r" % name
    return "key #%d" % position if position else "a key"


def check_name(name, what="key", position=None):
    """Raise SchemaError unless `name` is a usable NVS key (`what` prefixes the message)."""
    if not isinstance(name, str) or not name:
        raise SchemaError("%s: NVS keys are non-empty strings" % what)
    size = len(name.encode())
    if size > MAX_KEY_BYTES:
        raise SchemaError("%s%s is %d bytes; NVS keys are at most %d"
                          % (what + " " if what != "key" else "", label(name, position), size, MAX_KEY_BYTES))


def declared(header, position=None):
    """(name, kind) of a key as written in a settings file or batch header: "name" or "name:type".

    ":i32", ":blob" (text) and ":file" (binary, from a file) declare a key dynreg does not read,
    for the application's own use; a known key keeps its schema type.
    """
    name, _, kind = header.strip().partition(":")
    name, kind = name.strip(), kind.strip()
    check_name(name, "key", position)
    if not kind:
        if name not in BY_NAME:
            near = difflib.get_close_matches(name, list(BY_NAME), 1)
            raise SchemaError("%s is not one dynreg reads%s; to store a key of your own, declare its type: "
                              "name:blob, name:i32 or name:file" % (label(name, position),
                                                                     " (did you mean %r?)" % near[0] if near else ""))
        return name, BY_NAME[name].kind
    kinds = {"i32": I32, "blob": TEXT, "text": TEXT, "file": BINARY}
    if kind not in kinds:
        raise SchemaError("%s: the type after ':' must be i32, blob or file" % label(name, position))
    if name in BY_NAME and (kinds[kind] == I32) != (BY_NAME[name].kind == I32):
        raise SchemaError("%s: dynreg reads it as %s" % (label(name, position), BY_NAME[name].nvs_type))
    return name, kinds[kind] if name not in BY_NAME else BY_NAME[name].kind


def _describe(value):
    """The kind of a settings value, for messages (never the value itself)."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, str):
        return "text"
    if isinstance(value, int):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    return "a %s" % type(value).__name__


def check_value(name, kind, value):
    """Raise SchemaError unless a settings value fits its key's type (the message never holds the value).

    TEXT takes a string (or bytes, library use), I32 an int in range, BINARY {"file": path} or bytes.
    """
    if kind == I32:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError("%s must be an integer (dynreg reads it as i32), not %s" % (name, _describe(value)))
        if not -(2 ** 31) <= value < 2 ** 31:
            raise SchemaError("%s does not fit in an i32" % name)
        return
    if isinstance(value, (bytes, bytearray)):
        pass
    elif kind == TEXT and not isinstance(value, str):
        raise SchemaError("%s must be text (dynreg reads it as a text blob), not %s" % (name, _describe(value)))
    elif kind == BINARY and not (isinstance(value, dict) and set(value) == {"file"}
                                 and isinstance(value["file"], str)):
        raise SchemaError('%s must be {"file": "path"} (a binary blob, e.g. a PEM or DER file), not %s'
                          % (name, _describe(value)))
    # dynreg's Store reads its own keys up to MAX_BLOB; an application's keys are its business
    if name in BY_NAME and isinstance(value, (str, bytes, bytearray)) and \
            len(value.encode() if isinstance(value, str) else value) > MAX_BLOB:
        raise SchemaError("%s is %d bytes; the device reads blobs up to %d"
                          % (name, len(value.encode() if isinstance(value, str) else value), MAX_BLOB))


def is_null(value):
    """True if an identity value means "not registered yet" (the firmware's is_null())."""
    return value is None or (isinstance(value, bytes) and value.strip() in NULL_SECRETS)


def own_host(platform, host):
    """True if `host` (None: the firmware's default) is one of the platform's own servers."""
    suffix = PLATFORM_DOMAINS.get(platform)
    return bool(suffix) and (host is None or ("." + host.lower().rstrip(".")).endswith(suffix))


# --------------------------------------------------------------------------- docs/nvs-keys.md

def markdown():
    """docs/nvs-keys.md, generated from KEYS."""
    lines = [
        "# NVS keys",
        "",
        "<!-- generated by `python -m tools.factory.nvs_schema --doc` from tools/factory/nvs_schema.py; "
        "do not edit -->",
        "",
        "Namespace `%s`. MicroPython reads only `i32` and blob entries, so text is stored as UTF-8 blobs and "
        "binary values (certificates, keys) as DER blobs. Keys are at most %d bytes; the device reads blobs of "
        "up to %d bytes; the default NVS partition is %#x bytes." % (NAMESPACE, MAX_KEY_BYTES, MAX_BLOB,
                                                                      PARTITION_SIZE),
        "",
        "| key | type | meaning | default | written by | secret |",
        "|---|---|---|---|---|---|",
    ]
    for k in KEYS:
        kind = {TEXT: "blob (text)", BINARY: "blob (binary)", I32: "i32"}[k.kind]
        lines.append("| `%s` | %s | %s | %s | %s | %s |" % (k.name, kind, k.meaning, k.default, k.written,
                                                          "yes" if k.secret else ""))
    lines += [
        "",
        "Secret keys are never shown by the tools (errors, `tools/factory/flash.py show`) and files holding them are "
        "created 0600.",
        "An identity key (`%s`) holding one of the null values (%s) means \"not registered yet\"."
        % ("`, `".join(IDENTITY_KEYS), ", ".join("`%s`" % v.decode() if v else "empty" for v in NULL_SECRETS)),
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description="The dynreg NVS schema: write docs/nvs-keys.md.")
    parser.add_argument("--doc", metavar="PATH", nargs="?", const="docs/nvs-keys.md",
                        help="write the key table (default docs/nvs-keys.md); without it, print it")
    args = parser.parse_args(argv)
    if args.doc:
        with open(args.doc, "w", encoding="utf-8") as f:
            f.write(markdown())
    else:
        sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
