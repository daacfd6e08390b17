"""tls.mode=helm: what the chart generates, and that `helm upgrade` keeps it.

Upgrades are rendered against a stand-in API server that serves the Secrets
of the previous rendering, so the chart's `lookup` runs for real (Helm's own
client: discovery, then GET of each Secret)."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import http.server
import json
import threading
from contextlib import contextmanager

import helm_python as helm
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from chart import NAMESPACE, RELEASE, VALUE_SETS, load_chart, merge, parse, render

VALUES = VALUE_SETS["defaults"]


def secret_data(out, name):
    return {k: base64.b64decode(v) for k, v in out.one("Secret", name)["data"].items()}


def cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


class FakeCluster:
    """Just enough of the API server for Helm's `lookup` of Secrets."""

    def __init__(self, objects):
        self.secrets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}
        cluster = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.split("?")[0]
                prefix = f"/api/v1/namespaces/{NAMESPACE}/secrets/"
                if path == "/api/v1":
                    body, code = {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1", "resources": [
                        {"name": "secrets", "singularName": "secret", "namespaced": True, "kind": "Secret",
                         "verbs": ["get", "list"]}]}, 200
                elif path.startswith(prefix) and path[len(prefix):] in cluster.secrets:
                    body, code = cluster.secrets[path[len(prefix):]], 200
                else:
                    body, code = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                                  "code": 404}, 404
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    @contextmanager
    def running(self):
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{self.server.server_port}"
        finally:
            self.server.shutdown()
            self.server.server_close()


def upgrade(previous, values=VALUES):
    """Renders `helm upgrade` against a cluster holding `previous`'s objects."""
    cluster = FakeCluster(previous.objects)
    with cluster.running() as url:
        with helm.Config(kube_apiserver=url, kube_token="test", namespace=NAMESPACE) as cfg:
            return parse(cfg.render(load_chart(), values, name=RELEASE, namespace=NAMESPACE, is_upgrade=True))


@pytest.fixture(scope="module")
def installed():
    return render(VALUES)


def test_generated_ca_is_an_ed25519_ca_with_a_pkcs8_key(installed):
    data = secret_data(installed, "multinic-issuer-ca")
    ca = cert(data["tls.crt"])
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert isinstance(ca.public_key(), ed25519.Ed25519PublicKey)
    # The controller's issuer (rcgen with ring) reads PKCS#8 only; Helm's genCA
    # would make a PKCS#1 RSA key it refuses.
    assert data["tls.key"].startswith(b"-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(data["tls.key"], None)
    assert key.public_key().public_bytes_raw() == ca.public_key().public_bytes_raw()
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert dt.timedelta(days=3649) < lifetime <= dt.timedelta(days=3651)
    assert installed.one("Secret", "multinic-issuer-ca")["type"] == "kubernetes.io/tls"


def test_server_certificate_names_the_service_and_chains_to_the_ca(installed):
    ca = cert(secret_data(installed, "multinic-issuer-ca")["tls.crt"])
    data = secret_data(installed, "multinic-controller-tls")
    server = cert(data["tls.crt"])
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert f"multinic-controller.{NAMESPACE}.svc" in names
    assert f"multinic-controller.{NAMESPACE}.svc.cluster.local" in names
    assert ExtendedKeyUsageOID.SERVER_AUTH in server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert isinstance(server.public_key(), ec.EllipticCurvePublicKey)
    assert data["ca.crt"] == ca.public_bytes(serialization.Encoding.PEM)
    meta = installed.one("Secret", "multinic-controller-tls")["metadata"]["annotations"]
    recorded = dt.datetime.fromtimestamp(int(meta["multinic.io/not-after"]), dt.UTC)
    assert abs(recorded - server.not_valid_after_utc) < dt.timedelta(minutes=5)
    assert meta["multinic.io/names"].split(",")[0] == f"multinic-controller.{NAMESPACE}.svc"


def test_agents_and_controller_trust_the_generated_ca(installed):
    ca_pem = secret_data(installed, "multinic-issuer-ca")["tls.crt"].decode().strip()
    bundle = installed.one("ConfigMap", "multinic-ca-bundle")["data"]
    assert bundle["ca.crt"].strip() == ca_pem
    assert bundle["client-ca.crt"].strip() == ca_pem
    extra = render(merge(VALUES, {"tls": {"clientCABundle": "-----BEGIN CERTIFICATE-----\nOPERATORS\n-----END CERTIFICATE-----\n"}}))
    client = extra.one("ConfigMap", "multinic-ca-bundle")["data"]["client-ca.crt"]
    assert client.count("BEGIN CERTIFICATE") == 2 and "OPERATORS" in client


def test_upgrade_keeps_the_ca_and_the_server_certificate(installed):
    upgraded = upgrade(installed)
    for name in ["multinic-issuer-ca", "multinic-controller-tls"]:
        assert secret_data(upgraded, name) == secret_data(installed, name), f"{name} changed at upgrade"
    assert upgraded.one("ConfigMap", "multinic-ca-bundle") == installed.one("ConfigMap", "multinic-ca-bundle")


def test_without_a_cluster_every_rendering_makes_new_material(installed):
    """Why GitOps renderers without `lookup` should use another mode."""
    again = render(VALUES)
    assert secret_data(again, "multinic-issuer-ca") != secret_data(installed, "multinic-issuer-ca")


def test_upgrade_renews_a_server_certificate_close_to_expiry(installed):
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(days=10)).timestamp()
    aged = copy.deepcopy(installed)
    aged.one("Secret", "multinic-controller-tls")["metadata"]["annotations"]["multinic.io/not-after"] = str(int(soon))
    upgraded = upgrade(aged)
    assert secret_data(upgraded, "multinic-issuer-ca") == secret_data(installed, "multinic-issuer-ca")
    new = secret_data(upgraded, "multinic-controller-tls")
    assert new["tls.crt"] != secret_data(installed, "multinic-controller-tls")["tls.crt"]
    cert(new["tls.crt"]).verify_directly_issued_by(cert(secret_data(installed, "multinic-issuer-ca")["tls.crt"]))


def test_upgrade_reissues_the_server_certificate_when_its_names_change(installed):
    values = merge(VALUES, {"tls": {"extraDNSNames": ["multinic.example.org"], "extraIPs": ["192.0.2.7"]}})
    upgraded = upgrade(installed, values)
    assert secret_data(upgraded, "multinic-issuer-ca") == secret_data(installed, "multinic-issuer-ca")
    server = cert(secret_data(upgraded, "multinic-controller-tls")["tls.crt"])
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "multinic.example.org" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["192.0.2.7"]


def test_a_new_ca_means_a_new_server_certificate(installed):
    without_ca = copy.deepcopy(installed)
    without_ca.objects = [o for o in without_ca.objects if o["metadata"]["name"] != "multinic-issuer-ca"]
    upgraded = upgrade(without_ca)
    new_ca = cert(secret_data(upgraded, "multinic-issuer-ca")["tls.crt"])
    assert new_ca != cert(secret_data(installed, "multinic-issuer-ca")["tls.crt"])
    cert(secret_data(upgraded, "multinic-controller-tls")["tls.crt"]).verify_directly_issued_by(new_ca)
