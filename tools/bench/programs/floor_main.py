# bench: the floor any MQTT device pays. Join Wi-Fi, set the clock, umqtt.simple over TLS (server
# verified against the CA in NVS), connect, one publish; settings from NVS as a real device keeps them.
import esp32
import network
import ntptime
import ssl
import time

from umqtt.simple import MQTTClient

nvs = esp32.NVS("dynreg")


def blob(key):
    buf = bytearray(2048)
    return bytes(buf[:nvs.get_blob(key, buf)])


wlan = network.WLAN(network.STA_IF)
wlan.active(True)
wlan.connect(blob("wifi_ssid"), blob("wifi_pass"))
while not wlan.isconnected():
    time.sleep_ms(100)
ntptime.settime()
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.verify_mode = ssl.CERT_REQUIRED
ctx.load_verify_locations(cadata=blob("ca"))
host = blob("mqtt_host").decode()
c = MQTTClient(blob("dev_name"), host, nvs.get_i32("mqtt_port"), user=blob("floor_user"),
               password=blob("floor_pass"), keepalive=60, ssl=ctx)
c.connect()
c.publish(b"bench/floor", b'{"n":1}')
print("report 1 sent")
c.disconnect()
