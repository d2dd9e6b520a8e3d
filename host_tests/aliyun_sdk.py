"""The official Alibaba Cloud IoT SDK for Python (PyPI aliyun-iot-linkkit, pinned in requirements.txt) against
the emulator: one registration variant, then the login with what it issued and a property post.

Run in its own process by host_tests/test_aliyun.py. The SDK is used as published; only its hosts, ports
and CA are redirected: the HTTPS registration host (iot-auth.<region>.aliyuncs.com, port 443, built inside
the SDK) resolves to 127.0.0.1 and the emulator's HTTPS port (socket.getaddrinfo), the MQTT endpoint and
port and the CA bundle are the SDK's own settings (config_mqtt endpoint, port, cadata). Prints one
"sdk: ..." line per step, never a secret.
"""

import argparse
import json
import socket
import sys
import threading

WAIT = 20  # s for each step


def redirect(host, port):
    """Make `host`:443 resolve to 127.0.0.1:`port`."""
    real = socket.getaddrinfo

    def getaddrinfo(name, service, *args, **kwargs):
        if name == host and service in (443, "443"):
            return real("127.0.0.1", port, *args, **kwargs)
        return real(name, service, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo


def client(spec, **auth):
    from linkkit import linkkit

    lk = linkkit.LinkKit(host_name=spec["region"], product_key=spec["pk"], device_name=spec["dn"], **auth)
    lk.config_mqtt(port=spec["mqtts"], endpoint="localhost", cadata=spec["ca"])
    return lk


def step(lk, what):
    """Start `lk` and wait for the Event its callbacks set; exit 1 if it does not come."""
    lk.connect_async()
    if not lk.user_event.wait(WAIT):
        print("sdk: no %s within %d s" % (what, WAIT), flush=True)
        sys.exit(1)


def register(spec):
    """The variant's registration -> the keyword arguments of the login client."""
    done, got = threading.Event(), {}
    variant = spec["variant"]
    if variant == "https":  # the SDK registers over HTTPS itself, then logs in with the secret at once
        return None
    lk = client(spec, device_secret="", product_secret=spec["ps"], auth_type=spec["variant"])
    lk.user_event = done
    if variant == "regnwl":
        def on_reply(rc, client_id, username, password):
            got.update(rc=rc, client_id=client_id, username=username, password=password)
            done.set()
        lk.on_device_dynamic_register_nwl_reply = on_reply
    else:
        def on_reply(rc, value, userdata):
            got.update(rc=rc, device_secret=value)
            done.set()
        lk.on_device_dynamic_register = on_reply
    step(lk, "registration reply")
    lk.destruct()
    print("sdk: registered over mqtt (%s), rc %s" % (variant, got.pop("rc")), flush=True)
    return got


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("spec", help="JSON: pk, ps, dn, region, variant (https|register|regnwl), https, mqtts, ca")
    spec = json.loads(p.parse_args(argv).spec)
    redirect("iot-auth.%s.aliyuncs.com" % spec["region"], spec["https"])
    auth = register(spec)
    done = threading.Event()
    if auth is None:
        lk = client(spec, device_secret="", product_secret=spec["ps"])

        def on_registered(rc, value, userdata):
            print("sdk: registered over https, rc %s" % rc, flush=True)
        lk.on_device_dynamic_register = on_registered
    else:
        lk = client(spec, **auth) if "device_secret" in auth else client(spec, device_secret="", **auth)
    lk.user_event = done
    topic = "/sys/%s/%s/thing/event/property/post" % (spec["pk"], spec["dn"])

    def on_connect(session_flag, rc, userdata):
        print("sdk: logged in, rc %s" % rc, flush=True)
        lk.subscribe_topic(topic + "_reply", 0)

    def on_subscribe_topic(mid, granted_qos, userdata):
        lk.publish_topic(topic, json.dumps({"id": "1", "version": "1.0", "params": {"temp": 21.5},
                                            "method": "thing.event.property.post"}), 0)

    def on_topic_message(message_topic, payload, qos, userdata):
        print("sdk: %s %s" % (message_topic, json.loads(payload).get("code")), flush=True)
        done.set()

    lk.on_connect, lk.on_subscribe_topic, lk.on_topic_message = on_connect, on_subscribe_topic, on_topic_message
    step(lk, "post_reply")
    lk.destruct()
    return 0


if __name__ == "__main__":
    sys.exit(main())
