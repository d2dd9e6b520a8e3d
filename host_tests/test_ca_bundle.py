"""The clouds' public CAs shipped in tools/factory/ca/: each file matches the fingerprint and dates its
SOURCES.md row states, and provisioning uses it when `ca` is left empty for the platform's own hosts."""
import csv
import datetime
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from host_tests.conftest import REPO
from tools.factory import provision
from tools.factory import nvs_schema as schema

CA_DIR = REPO / "tools" / "factory" / "ca"


def sources():
    """{platform: row} of the table in SOURCES.md."""
    rows = {}
    for line in (CA_DIR / "SOURCES.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] in schema.PLATFORMS:
            rows[cells[0]] = dict(zip(("platform", "file", "certificate", "valid", "sha256", "source"), cells))
    return rows


def test_every_platform_has_a_row():
    assert sorted(sources()) == sorted(schema.PLATFORMS)


@pytest.mark.parametrize("platform", schema.PLATFORMS)
def test_file_matches_its_fingerprint_and_dates(platform):
    row = sources()[platform]
    path = CA_DIR / ("%s.pem" % platform)
    if row["file"] == "—":
        assert not path.exists() and "not published" in row["certificate"]
        return
    assert row["file"] == "`%s.pem`" % platform
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    der = cert.public_bytes(serialization.Encoding.DER)
    assert row["sha256"] == "`%s`" % cert.fingerprint(hashes.SHA256()).hex()
    assert row["valid"] == "%s – %s" % (cert.not_valid_before_utc.date(), cert.not_valid_after_utc.date())
    assert cert.subject == cert.issuer  # a root: the device trusts it directly
    # signed by its own key; checked by hand: verify_directly_issued_by refuses the SHA-1 of older roots
    key, algorithm = cert.public_key(), cert.signature_hash_algorithm
    if isinstance(key, rsa.RSAPublicKey):
        key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), algorithm)
    else:
        key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
    assert len(der) <= schema.MAX_BLOB
    assert re.search(r"github\.com/|PyPI", row["source"])


def _claim(tmp_path, platform):
    """An AWS board's claim certificate and key cells (any certificate: provisioning only stores them)."""
    if platform != "aws":
        return {}
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "claim")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(datetime.datetime(2000, 1, 1))
            .not_valid_after(datetime.datetime(2050, 1, 1)).sign(key, hashes.SHA256()))
    (tmp_path / "claim.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "claim.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    return {"claim_cert": str(tmp_path / "claim.pem"), "claim_key": str(tmp_path / "claim.key")}


def _batch(tmp_path, **cells):
    path = tmp_path / "b.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(cells))
        w.writerow(list(cells.values()))
    return provision.read_batch(path)


@pytest.mark.parametrize("platform", ["tencent", "ucloud", "aliyun", "thingsboard", "aws", "azure"])
def test_empty_ca_is_the_platforms_own_for_its_hosts(tmp_path, platform):
    der = x509.load_pem_x509_certificate((CA_DIR / ("%s.pem" % platform)).read_bytes()).public_bytes(
        serialization.Encoding.DER)
    host = {"tencent": "SIMPSK0001.iotcloud.tencentdevices.com", "ucloud": "mqtt-cn-sh2.iot.ucloud.cn",
            "aliyun": "a1ExpAkj9Hi.iot-as-mqtt.cn-shanghai.aliyuncs.com",
            "aws": "a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com",
            "azure": "myhub.azure-devices.net",
            "thingsboard": "mqtt.thingsboard.cloud"}[platform]
    for cells in ({}, {"ca": ""}, {"mqtt_host": host}):
        batch = _batch(tmp_path, platform=platform, prod_id="P", prod_secret="s", dev_name="dev-0001", **cells,
                       **_claim(tmp_path, platform))
        (_, entries, _), = provision.plan_images(batch, schema.PARTITION_SIZE)
        assert entries["ca"] == der, cells


@pytest.mark.parametrize("cells, why", [
    ({"platform": "tencent", "reg_host": "localhost"}, "the platform's own"),  # the emulator: its own CA
    ({"platform": "ucloud", "mqtt_host": "mqtt.example.com"}, "the platform's own"),
    ({"platform": "protco"}, "publishes none"),
    ({"platform": "aws", "mqtt_host": "localhost"}, "the platform's own"),
])
def test_no_shipped_ca_for_other_hosts(tmp_path, cells, why):
    cells = dict(cells, **_claim(tmp_path, cells["platform"]))
    batch = _batch(tmp_path, prod_id="P", prod_secret="s", dev_name="dev-0001", **cells)
    with pytest.raises(provision.ProvisionError, match="ca is missing .*%s" % why):
        provision.plan_images(batch, schema.PARTITION_SIZE)
    # plain TCP needs none
    batch = _batch(tmp_path, prod_id="P", prod_secret="s", dev_name="dev-0001", tls="0", **cells)
    (_, entries, _), = provision.plan_images(batch, schema.PARTITION_SIZE)
    assert "ca" not in entries


def test_aliyun_second_root_is_the_sdks():
    """aliyun-iot-root.pem: the SDK's Aliyun IoT Root CA, with the fingerprint SOURCES.md states."""
    cert = x509.load_pem_x509_certificate((CA_DIR / "aliyun-iot-root.pem").read_bytes())
    assert cert.subject == cert.issuer and "Aliyun IoT Root CA" in cert.subject.rfc4514_string()
    assert cert.fingerprint(hashes.SHA256()).hex() in (CA_DIR / "SOURCES.md").read_text()


def test_aws_root_is_amazon_root_ca_1():
    """The file is the root AWS publishes, by the fingerprint amazontrust.com states for AmazonRootCA1.pem."""
    cert = x509.load_pem_x509_certificate((CA_DIR / "aws.pem").read_bytes())
    assert cert.fingerprint(hashes.SHA256()).hex(":").upper() == (
        "8E:CD:E6:88:4F:3D:87:B1:12:5B:A3:1A:C3:FC:B1:3D:70:16:DE:7F:57:CC:90:4F:E1:CB:97:C6:AE:98:19:6E")
    assert cert.subject.rfc4514_string() == "CN=Amazon Root CA 1,O=Amazon,C=US"
