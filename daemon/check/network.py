"""The ``imap.dns``, ``imap.tcp`` and ``imap.tls`` steps, and a time bound for any step.

Each network step is bounded: sockets get the check's timeout, and calls without one of their
own (``getaddrinfo``, MSAL) run in a daemon thread that is abandoned when time is up.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from daemon.check.model import Finding
from daemon.tls import make_ssl_context

T = TypeVar("T")


class StepTimeout(Exception):
    """A step did not finish within its time bound."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no answer within {seconds:g} s")
        self.seconds = seconds


class _Outcome(Generic[T]):
    def __init__(self) -> None:
        self.value: T | None = None
        self.error: BaseException | None = None
        self.done = False


def bounded(call: Callable[[], T], seconds: float) -> T:
    """Return ``call()``, or raise StepTimeout after ``seconds`` (the call is abandoned)."""
    outcome: _Outcome[T] = _Outcome()

    def target() -> None:
        try:
            outcome.value = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome.error = exc
        outcome.done = True

    thread = threading.Thread(target=target, name="mailsyncd-check-step", daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome.done:
        raise StepTimeout(seconds)
    if outcome.error is not None:
        raise outcome.error
    return outcome.value  # type: ignore[return-value]


def check_dns(host: str, port: int, key: str, timeout: float) -> Finding:
    """Does the IMAP host name resolve?"""
    try:
        infos = bounded(lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout)
    except (OSError, StepTimeout) as exc:
        return Finding.failed(
            f"{host} does not resolve: {exc}",
            cause="the host name is wrong or this host's DNS cannot resolve it",
            fix=f"check {key}.imap.host (Exchange Online: outlook.office365.com) and the DNS "
            "resolver of this host or pod (/etc/resolv.conf)",
        )
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    shown = ", ".join(addresses[:3]) + (", ..." if len(addresses) > 3 else "")
    return Finding.passed(f"{host} resolves to {shown}", addresses=shown)


def check_tcp(host: str, port: int, key: str, timeout: float) -> Finding:
    """Does something accept TCP connections on the IMAP port?"""
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            peer = sock.getpeername()
    except ConnectionRefusedError:
        return Finding.failed(
            f"{host}:{port} refused the connection",
            cause=f"nothing listens on port {port} of {host}",
            fix=f"check {key}.imap.port (Exchange Online: 993, implicit TLS) and {key}.imap.host",
        )
    except TimeoutError:
        return Finding.failed(
            f"{host}:{port} did not answer within {timeout:g} s",
            cause="a firewall, proxy or network policy drops the connection",
            fix=f"allow outbound TCP to {host}:{port} from this host (Kubernetes: the "
            "NetworkPolicy egress of the pod); mailsyncd needs a direct connection",
        )
    except OSError as exc:
        return Finding.failed(
            f"cannot connect to {host}:{port}: {exc.strerror or exc}",
            cause="the network path to the IMAP server is broken",
            fix=f"check routing and firewalls from this host to {host}:{port}",
        )
    elapsed = (time.monotonic() - started) * 1000
    return Finding.passed(f"connected to {peer[0]}:{peer[1]} in {elapsed:.0f} ms")


def ssl_context_or_finding(ca_file: str | None) -> ssl.SSLContext | Finding:
    """The verifying context the daemon uses, or a failed finding about ``tls.ca_file``."""
    try:
        return make_ssl_context(ca_file)
    except (OSError, ssl.SSLError) as exc:
        return Finding.failed(
            f"tls.ca_file {ca_file} cannot be loaded: {exc}",
            cause="tls.ca_file is not a PEM bundle of CA certificates",
            fix="point tls.ca_file at a PEM file of CA certificates (-----BEGIN CERTIFICATE-----)",
        )


def check_tls(
    host: str,
    port: int,
    key: str,
    *,
    context: ssl.SSLContext,
    ca_file: str | None,
    timeout: float,
) -> Finding:
    """Does the server's certificate verify for this host name (system CAs + tls.ca_file)?"""
    trusted = f"tls.ca_file ({ca_file}) and the system CAs" if ca_file else "the system CAs"
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            version = tls.version() or "TLS"
            cert = tls.getpeercert() or {}
    except ssl.SSLCertVerificationError as exc:
        mismatch = "mismatch" in str(exc.verify_message).lower()
        cause = (
            f"the certificate is not issued for {host}"
            if mismatch
            else f"no CA in {trusted} signed the server's certificate"
        )
        return Finding.failed(
            f"certificate of {host}:{port} did not verify: {exc.verify_message}",
            cause=cause,
            fix=(
                f"set {key}.imap.host to a name the certificate is issued for"
                if mismatch
                else "set tls.ca_file to the PEM bundle of the CA that issued the server's "
                "certificate (behind a TLS-inspecting proxy: the proxy's CA); now: "
                + (str(ca_file) if ca_file else "not set")
            ),
        )
    except TimeoutError:
        return Finding.failed(
            f"TLS handshake with {host}:{port} did not finish within {timeout:g} s",
            cause="the server accepted TCP but does not speak TLS on this port",
            fix=f"use the implicit-TLS port in {key}.imap.port (Exchange Online: 993)",
        )
    except (ssl.SSLError, OSError) as exc:
        return Finding.failed(
            f"TLS handshake with {host}:{port} failed: {exc}",
            cause="the port does not speak implicit TLS (STARTTLS and plain text are not "
            "supported) or the server's TLS is too old (TLS 1.2 at least)",
            fix=f"use the implicit-TLS port in {key}.imap.port (Exchange Online: 993)",
        )
    return Finding.passed(
        f"{version}, certificate for {_name(cert, 'subject')} issued by "
        f"{_name(cert, 'issuer')}, valid until {cert.get('notAfter', '?')}",
        tls_version=version,
    )


def _name(cert: dict[str, Any], field: str) -> str:
    for rdn in cert.get(field, ()):
        for attribute, value in rdn:
            if attribute == "commonName":
                return str(value)
    return "?"
