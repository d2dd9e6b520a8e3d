"""Cloud emulator: the IoT platform side of dynamic registration, on your PC.

Run it in the foreground from the repository root:

    .venv/bin/python -m tools.cloud [--state build/cloud] [--registry tools/cloud/registry.json]
        [--host 127.0.0.1] [--http-port 8080] [--https-port 8443] [--mqtt-port 1883]
        [--mqtts-port 8883] [--ts-window 600] [--probe-delay-ms 0] [--cert-name NAME ...]
        [--connect-timeout 10] [--console-password PW] [--console-over-tcp]

One MQTT broker (amqtt) over plain TCP and TLS serves every platform; a CONNECT is recognised by
the shape of its username. It takes MQTT 3.1 ("MQIsdp", level 3) and 3.1.1 (connect.py), and MQTT 5
bridged packet by packet to the 3.1.1 broker (mqtt5.py: properties dropped, reason codes made); a
connection whose TLS handshake or CONNECT takes longer than --connect-timeout is closed; a login
closes the older connection of its client id (MQTT-3.1.4-2); a login whose credentials carry an
expiry (Azure's SAS tokens) is closed when they expire. These platforms are emulated:

Tencent (docs/platforms/tencent.md)
- registration over HTTP and HTTPS: POST /device/register (X-TC-* signature, hmacsha256 or
  hmacsha1, algorithm header in any case) and the legacy POST /register/dev; replies are HTTP 200
  with Tencent's JSON (errors too), the device secret or certificate AES-encrypted with the
  product secret;
- MQTT login with the PSK signature and expiry, or the issued client certificate; each device
  uses only its own topics; $sys/operation time requests and $thing/up/property reports are
  answered.

UCloud (section 2): registration over MQTT
- registration login: ClientID "<ProductSN>.<DeviceSN>", UserName "<ProductSN>|<DeviceSN>|2",
  Password = product secret. Refused (CONNACK 5) for a wrong secret, a DeviceSN outside 4-64 of
  [A-Za-z0-9-_@:], dynamic registration off, or a DeviceSN missing from the product's whitelist.
- that session may only subscribe /$system/<psn>/<dsn>/password_reply and publish
  /$system/<psn>/<dsn>/password. {"RequestID": X} is answered
  {"RetCode": "0", "RequestID": X, "Password": "<16 characters>"}. Our error codes (UCloud
  documents none), with a "Message": RetCode "1" device already activated, "2" request not
  understood (not JSON, no RequestID).
- device login: UserName "<psn>|<dsn>|1", Password = the device secret; topics under
  /<psn>/<dsn>/ (publish .../upload, subscribe .../set).
- both logins: keepalive 30-1200 s and no will, else CONNACK 5.

Protco rlink v2 (section 3): signed registration over MQTT
- both logins: Username "<who>|signMethod=<hmacSha256|hmacSha1>,ts=<ts>" (method in any case),
  Password = lowercase hex HMAC(key, "uuid=<who>,ts=<ts>"); ts within --ts-window.
- registration login: ClientId "register_<pid>_<unique>" (unique: 1-64 of A-Z a-z 0-9 - . : @),
  who = pid, key = product secret; it may only subscribe register/v2/<pid>/<unique>/register_response
  and publish register/v2/<pid>/<unique>/register. A request {"id", "ts", "code": "register",
  "data": {"barcode"?, "replacePid"?, "secret"?}} is answered {"res": 0, "msg": "success", "id",
  "ts", "code": "register", "data": {"pid", "uuid": "rn01" + 16 hex, "secret": 32 hex, "mac": ""}}
  ("ack" is not looked at: there is always a reply). replacePid names any product in the
  registry and needs its secret; the device then belongs to it. res on refusal: 1003 not JSON,
  1002 no id / code not "register" / replacePid without the right secret / bad field,
  1005 replacePid unknown, 1006 dynamic registration off, 17032 device already activated.
- device login: ClientId "rlink_<uuid>_V2", who = uuid, key = device secret. Topics: publish
  rlink/v2/<pid>/<uuid>/report and .../issue_response, subscribe .../issue and
  .../report_response; a report with "ack": 1 gets a report_response. After the first
  property_report of a session the emulator sends {"id", "ts", "code": "ping", "data": {}} and
  {"id", "ts", "code": "property_set", "data": {"properties": {"led": 1}}} on .../issue and
  counts the answers on .../issue_response ("commands_answered").
- a registration signature (pid, ts, password) belongs to the first unique id registered with it
  (it does not sign the unique id): another unique id with it is refused, CONNACK 5 (res 1002 for
  a session that logged in before).

Alibaba Cloud IoT (docs/platforms/aliyun.md; the rules in tools/cloud/aliyun.py's docstring):
registration over HTTPS POST /auth/register/device or over MQTT (authType=register / regnwl, the
reply pushed on /ext/register / /ext/regnwl right after the CONNACK), the login with the device
secret or the registration-free token, Alink property post / set.
ThingsBoard (docs/platforms/thingsboard.md): device provisioning over MQTT
- provisioning login: username or client id "provision" (any password), always accepted; it may only
  publish /provision/request and subscribe /provision/response. The request's provisionDeviceKey names
  a product (device profile), provisionDeviceSecret must be its secret: else, or with provisioning
  disabled ("dynreg": false), {"status": "NOT_FOUND", "errorMsg": "Provision data was not found!"}.
  "auto_create": true (allow to create new devices): a name that exists already gets {"status":
  "FAILURE", "errorMsg": "Failed to provision device!"}; false (check for pre-provisioned devices): a
  name not in "devices" gets FAILURE, a listed one its own token every time. Success: {"status":
  "SUCCESS", "credentialsType": "ACCESS_TOKEN", "credentialsValue": token} (the token the device sent,
  or a new one), or MQTT_BASIC with {"clientId", "userName", "password"} as the device sent them.
- device login: username = the access token, or the MQTT_BASIC triple; topics v1/devices/me/...
  (telemetry, attributes, rpc); a server-side RPC "ping" after the first telemetry of a session.
  Each session receives only what was addressed to it ("me" topics are shared by every device).
AWS IoT Core (docs/platforms/aws.md): fleet provisioning by claim over mutual TLS
- a claim certificate issued at start (state dir aws-claim.pem, aws-claim.key) may only use
  $aws/certificates/create/json and $aws/provisioning-templates/<template>/provision/json and
  their .../accepted, .../rejected (answered to the requesting connection only);
  CreateKeysAndCertificate issues a key (RSA-2048, or EC P-256 with --aws-key ec256) and a
  certificate of the CA; RegisterThing checks the single-use ownership token and the template's
  parameters and makes the thing; refusals on .../rejected {"statusCode", "errorCode", "errorMessage"}.
- a thing's certificate logs in as the thing name and uses dt/<thing>/..., cmd/<thing>/... and
  $aws/things/<thing>/shadow/...; any other certificate of the CA gets CONNACK 5.
Azure IoT Hub DPS and IoT Hub (docs/platforms/azure.md; the rules in tools/cloud/azure.py)
- DPS login: ClientId <registration id>, Username "<ID scope>/registrations/<registration id>/api-version=..",
  Password a SAS token; the session subscribes $dps/registrations/res/#, publishes the register PUT and
  the operation-status GET, and hears the replies to its own $rid only. The PUT is checked (scope known,
  registration id of a-z 0-9 -, group enabled, SAS signed with the key derived from the group key and
  not expired, body) and answered 202 {"operationId", "status": "assigning"} with retry-after; after
  the product's "polls" GETs the outcome is "assigned" (hub, deviceId = registration id) or "failed".
  Refusals: 401 / errorCode 401002 (scope, key, disabled group), 400 / 400004 (registration id, body),
  404 / 404201 (unknown operation). A device may register again at any time (its key is derived).
- hub login: ClientId <deviceId>, Username "<hub>/<deviceId>/?api-version=..", Password a SAS token over
  <hub>/devices/<deviceId> signed with the device key (CONNACK 5 when wrong or expired); the connection
  is closed when the token expires. Topics: publish devices/<id>/messages/events/.., subscribe and
  receive devices/<id>/messages/devicebound/#.

Replay protection (Tencent HTTP): a request that passed the signature and timestamp checks is
remembered by (API, ProductId, DeviceName, nonce, timestamp) for twice the --ts-window, across
restarts (seen-tencent.json); the same again is refused with AuthFailure.SignatureFailure, Message "nonce already used within the timestamp
window (replayed request)" (legacy API: code 1003). Older requests fail the window check anyway.

All platforms: a device may register again (new credentials replace the old ones; Protco keeps
the uuid) until its first successful MQTT login; afterwards registration is refused.

Round trips: each MQTT connection counts its round trips (the CONNECT starts the first; a client
packet that follows something the server sent starts the next). A registration's count is logged
and kept in the device record: a client that sends SUBSCRIBE and PUBLISH back to back needs 2,
one that waits for the SUBACK 3. Without help the count depends on timing (the SUBACK may leave
before a pipelined PUBLISH arrives); --probe-delay-ms N holds the SUBACK of a registration reply
topic back N ms, which makes it exact. A Tencent HTTP registration counts as 1.

Registry file (JSON; keys starting with "_" are comments, at any level):

    {"tencent": {"<ProductId>": {"secret": "<product secret, 16+ ASCII chars>",
        "dynreg": true,          # dynamic registration switched on in the console
        "auto_create": true,     # false: only names listed in "devices" may register
        "auth": "psk",           # or "cert": devices get a client certificate instead of a PSK
        "devices": []}},         # pre-created device names
     "ucloud": {"<ProductSN>": {"secret": "...", "dynreg": true,
        "whitelist": ["<DeviceSN>", ...],   # optional: pre-authentication, only these may register
        "retcode": ..., "reply": "normal"}},                     # test knobs, see below
     "protco": {"<pid>": {"secret": "...", "dynreg": true,
        "probe_commands": true,  # ping + property_set after the first property_report
        "res": ..., "reply": "normal"}},                         # test knobs, see below
     "thingsboard": {"<provision device key>": {"secret": "<provision device secret>", "dynreg": true,
        "auto_create": true,     # false: check for pre-provisioned devices, the names in "devices"
        "devices": [], "probe_commands": true, "reply": "normal"}},  # ping RPC; test knob "none"
     "aws": {"<template>": {"dynreg": true,            # false: the template is disabled
        "parameters": {"<name>": {"pattern"?: "<regex>", "default"?: "..."}},  # no default = required
        "thing_name": "prefix-{SerialNumber}", "configuration": {...}}},    # deviceConfiguration
     "azure": {"<ID scope>": {"secret": "<enrollment group key, base64>", "dynreg": true,
        "polls": 2,              # operation-status GETs before the outcome
        "retry_after": 1,        # seconds, in every 202
        "hub": "sim-hub.azure-devices.net",   # the assignedHub
        "allocation": "assigned"}},           # or "failed" (test knob)
     "console": {"username": "..."}}      # its password: console.password in the state directory

UCloud, Protco and Azure product ids are 1-64 characters of A-Z a-z 0-9 -. The console login may
subscribe and publish anything ("$" topics included) to watch devices or command them; from
another machine over TLS only, unless --console-over-tcp.

Test knobs (for device tests; a real cloud has none of them):
  "retcode" (UCloud) / "res" (Protco): every request is answered with this code instead of being
      handled; a zero ("0" or 0) is handled normally and the success reply carries the value as
      given, so "retcode": 0 sends a numeric RetCode (as the C SDK parses it).
  "reply": "none" never answers (the request is still handled); "other_id" first sends an error
      reply for another request id, then the right one.

State directory (kept across restarts; delete it to start afresh):
  ca.pem, ca.der, ca.key    test CA, generated on first run (give ca.der / ca.pem to the device)
  server.pem, server.key    server certificate for localhost, 127.0.0.1, ::1 and every --cert-name
                            (regenerated when a name is added)
  devices.json              {"tencent": {"<pid>/<dn>": {"psk" | "cert_fp", ...}},
                             "ucloud": {"<psn>/<dsn>": {"secret", ...}},
                             "protco": {"<pid>/<unique>": {"uuid", "pid", "secret", "barcode",
                             "commands_answered", ...}},
                             "aws": {"<template>/<claim client id>": {"thing", "cert_fp", ...}},
                             "azure": {"<scope>/<registration id>": {"secret" (the derived key), "hub",
                             "device_id", ...}},
                             "thingsboard": {"<key>/<name>": {"name", "profile", "secret",
                             "token_id" | "basic_id", "rpc_answered", ...}}}; every record also holds "activated",
                            "registrations", "logins" and "round_trips" (of the last registration)
                            The file is also the console: replaced while the emulator runs (e.g. by
                            registry.forget_device(path, platform, key), "delete the device"), it is
                            read again at the next access; a deleted device's logins are refused
                            (CONNACK 5) and it may register again.
  ports.json                {"http", "https", "mqtt", "mqtts", "ca"}: written when ready, removed on exit
  console.password          the console login's password (0600): --console-password or
                            $DYNREG_CONSOLE_PASSWORD, else the one kept here, else a new one, shown
                            once when stdout is a terminal and never logged
  aws-claim.pem, .key       the AWS claim certificate and key (0600), issued on first run
  seen-tencent.json,        registration signatures already used (SHA-256 digests, 0600), kept for
  seen-protco.json          twice --ts-window, so that a replay is refused after a restart too

For a real board on the LAN: `make hil` (tools/hil) does it all; by hand, --host <this PC's LAN IP>
--cert-name <that IP>, and give the board
that IP as registration and MQTT host. Log lines on stdout start with "cloud: " and never carry
secrets. Stop with Ctrl-C or SIGTERM.

Modules: platform.py (the interface each platform implements, the MQTT-registration base shared
by UCloud, Protco and ThingsBoard, the console login, logging), tencent.py, ucloud.py, protco.py,
aliyun.py, thingsboard.py, aws.py, azure.py (each platform's rules), mqtt5.py (MQTT 5 clients),
registry.py (products, device state), state.py (console password, used
signatures), certs.py (test PKI), http.py (HTTP/HTTPS servers), broker.py (amqtt subclass and
plugins), connect.py (the first packet: MQTT 3.1, bounds), __main__.py (command line),
proc.py (running it as a child process: tests, bench, sim runner, make hil).
"""
