"""Outbound TLS: verified always; tls.ca_file adds to the system roots, never replaces them."""

from __future__ import annotations

import ssl
from pathlib import Path

from daemon.tls import make_ssl_context
from localenv import pki


def test_ca_file_is_trusted_in_addition_to_the_system_roots(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority.create("extra test CA")
    ca_file = tmp_path / "extra.pem"
    ca_file.write_bytes(pki.cert_pem(ca.cert))
    system = make_ssl_context().cert_store_stats()["x509_ca"]
    assert system > 0, "this machine has system CA roots"
    context = make_ssl_context(str(ca_file))
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    subjects = [dict(x[0] for x in c["subject"]).get("commonName") for c in context.get_ca_certs()]
    assert "extra test CA" in subjects
    assert context.cert_store_stats()["x509_ca"] == system + 1
