"""TLS for every outbound connection: always verified, system roots plus ``tls.ca_file``."""

from __future__ import annotations

import ssl


def make_ssl_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A verifying client context: the system CAs plus ``ca_file`` (``tls.ca_file``)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context
