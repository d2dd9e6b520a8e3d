"""The clouds' public CAs shipped in tools/factory/ca/: each file matches the fingerprint and dates its
SOURCES.md row states, and provisioning uses it when `ca` is left empty for the platform's own hosts."""
import csv
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

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
    cert.verify_directly_issued_by(cert)
    assert len(der) <= schema.MAX_BLOB
    assert re.search(r"github\.com/|PyPI", row["source"])


def _batch(tmp_path, **cells):
    path = tmp_path / "b.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(cells))
        w.writerow(list(cells.values()))
    return provision.read_batch(path)


@pytest.mark.parametrize("platform", ["tencent", "ucloud", "thingsboard"])
def test_empty_ca_is_the_platforms_own_for_its_hosts(tmp_path, platform):
    der = x509.load_pem_x509_certificate((CA_DIR / ("%s.pem" % platform)).read_bytes()).public_bytes(
        serialization.Encoding.DER)
    host = {"tencent": "SIMPSK0001.iotcloud.tencentdevices.com", "ucloud": "mqtt-cn-sh2.iot.ucloud.cn",
            "thingsboard": "mqtt.thingsboard.cloud"}[platform]
    for cells in ({}, {"ca": ""}, {"mqtt_host": host}):
        batch = _batch(tmp_path, platform=platform, prod_id="P", prod_secret="s", dev_name="dev-0001", **cells)
        (_, entries, _), = provision.plan_images(batch, schema.PARTITION_SIZE)
        assert entries["ca"] == der, cells


@pytest.mark.parametrize("cells, why", [
    ({"platform": "tencent", "reg_host": "localhost"}, "the platform's own"),  # the emulator: its own CA
    ({"platform": "ucloud", "mqtt_host": "mqtt.example.com"}, "the platform's own"),
    ({"platform": "protco"}, "publishes none"),
])
def test_no_shipped_ca_for_other_hosts(tmp_path, cells, why):
    batch = _batch(tmp_path, prod_id="P", prod_secret="s", dev_name="dev-0001", **cells)
    with pytest.raises(provision.ProvisionError, match="ca is missing .*%s" % why):
        provision.plan_images(batch, schema.PARTITION_SIZE)
    # plain TCP needs none
    batch = _batch(tmp_path, prod_id="P", prod_secret="s", dev_name="dev-0001", tls="0", **cells)
    (_, entries, _), = provision.plan_images(batch, schema.PARTITION_SIZE)
    assert "ca" not in entries
