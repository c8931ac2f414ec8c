"""The ``credential`` step: can this process read the tenant's credential, and is it usable?

Files are checked as the daemon will read them (same user, same paths), and what they hold is
looked at without ever being printed: a certificate's thumbprint and validity, whether its key
matches it, a federated token's issuer, subject and expiry.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import pwd
import re
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from daemon.check.model import Finding
from daemon.config import Tenant
from daemon.errors import SecretReadError

_GUID_RE = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_SOON_DAYS = 30
_WORKLOAD_IDENTITY = (
    'Azure Workload Identity projects it: label the pod azure.workload.identity/use: "true"'
    " and run it with a service account annotated azure.workload.identity/client-id: {client_id};"
    " the path is $AZURE_FEDERATED_TOKEN_FILE"
    " (usually /var/run/secrets/azure/tokens/azure-identity-token)"
)


@dataclass(frozen=True, slots=True)
class CredentialResult:
    """The finding, and what a later step may want to know (never the secret itself)."""

    finding: Finding
    secret_is_guid: bool = False
    thumbprint: str | None = None


class _Unusable(Exception):
    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.detail)
        self.finding = finding


def _user() -> str:
    uid = os.geteuid()
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _read(path: Path, key_path: str, what: str, placing: str) -> str:
    """The stripped text of ``path``; raise _Unusable with the cause and fix otherwise."""
    user = _user()
    if not path.exists():
        dangling = " (a symbolic link to a missing file)" if path.is_symlink() else ""
        raise _Unusable(
            Finding.failed(
                f"{key_path}: {path} does not exist{dangling}",
                cause=f"the {what} file is missing",
                fix=f"{placing} into {path}, readable by {user}, e.g. mode 0400; in Kubernetes "
                f"mount the Secret so that this path exists; or correct {key_path}",
            )
        )
    if path.is_dir():
        raise _Unusable(
            Finding.failed(
                f"{key_path}: {path} is a directory",
                cause=f"the path names a directory, not the {what} file",
                fix=f"name the file inside it in {key_path} (a Kubernetes Secret volume holds "
                "one file per key: <mountPath>/<key>)",
            )
        )
    if not os.access(path, os.R_OK):
        info = path.stat()
        raise _Unusable(
            Finding.failed(
                f"{key_path}: {path} is not readable by {user}",
                cause=f"the {what} file exists but this user may not read it "
                f"(mode {info.st_mode & 0o7777:04o}, owner uid {info.st_uid})",
                fix=f"chown {user.split()[0]} {path} && chmod 0400 {path}; in Kubernetes set "
                "defaultMode: 0440 on the Secret volume and the pod's securityContext.fsGroup",
            )
        )
    try:
        text = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        text = None
    except OSError as exc:
        raise _Unusable(
            Finding.failed(
                f"{key_path}: cannot read {path}: {exc.strerror}",
                cause=f"reading the {what} file failed",
                fix=f"make {path} a regular file readable by {user}",
            )
        ) from None
    if not text:
        problem = "is not UTF-8 text" if text is None else "is empty"
        raise _Unusable(
            Finding.failed(
                f"{key_path}: {path} {problem}",
                cause=f"the {what} file {problem}",
                fix=f"{placing} into {path}",
            )
        )
    return text


def check_credential(tenant: Tenant, key: str, now: float | None = None) -> CredentialResult:
    """Check the credential of ``tenant`` (``key`` is its key path, ``tenants[0]``)."""
    now = time.time() if now is None else now
    try:
        return _check(tenant, f"{key}.credential", now)
    except _Unusable as exc:
        return CredentialResult(exc.finding)


def _check(tenant: Tenant, key: str, now: float) -> CredentialResult:
    credential = tenant.credential
    portal = f"App registrations > {tenant.client_id} > Certificates & secrets"
    if credential.client_secret_file is not None:
        secret = _read(
            credential.client_secret_file,
            f"{key}.client_secret_file",
            "client secret",
            f"put the Value of a client secret ({portal})",
        )
        return CredentialResult(
            Finding.passed(f"client secret file {credential.client_secret_file} is readable"),
            secret_is_guid=bool(_GUID_RE.fullmatch(secret)),
        )
    if credential.client_secret_env is not None:
        name = credential.client_secret_env
        try:
            secret = credential.read_client_secret().get_secret_value()
        except SecretReadError:
            return CredentialResult(
                Finding.failed(
                    f"{key}.client_secret_env: the variable {name} is not set or is empty",
                    cause=f"this process has no {name} in its environment",
                    fix=f"set {name} to the Value of a client secret ({portal}) in the daemon's "
                    "environment (Kubernetes: env valueFrom secretKeyRef), and run check in that "
                    "same environment (e.g. kubectl exec)",
                )
            )
        return CredentialResult(
            Finding.passed(f"client secret variable {name} is set"),
            secret_is_guid=bool(_GUID_RE.fullmatch(secret)),
        )
    if credential.certificate is not None:
        return _check_certificate(tenant, key, now)
    if credential.federated_token_file is not None:
        return _check_federated(tenant, credential.federated_token_file, key, now)
    raise AssertionError("the config model allows no other credential")  # pragma: no cover


def _check_certificate(tenant: Tenant, key: str, now: float) -> CredentialResult:
    certificate = tenant.credential.certificate
    if certificate is None:  # pragma: no cover - the caller checked
        raise TypeError("not a certificate credential")
    cert_key = f"{key}.certificate.certificate_file"
    pem_key = f"{key}.certificate.private_key_file"
    cert_text = _read(
        certificate.certificate_file, cert_key, "certificate", "put the PEM certificate"
    )
    key_text = _read(
        certificate.private_key_file, pem_key, "private key", "put the PEM private key"
    )
    try:
        leaf = x509.load_pem_x509_certificates(cert_text.encode())[0]
    except ValueError:
        return CredentialResult(
            Finding.failed(
                f"{cert_key}: {certificate.certificate_file} holds no PEM certificate",
                cause="the file is not a PEM certificate (-----BEGIN CERTIFICATE-----)",
                fix="convert it: openssl x509 -in cert.der -inform der -out cert.pem",
            )
        )
    thumbprint = (
        hashlib.sha1(  # noqa: S324 - the thumbprint Entra ID shows and expects
            leaf.public_bytes(serialization.Encoding.DER)
        )
        .hexdigest()
        .upper()
    )
    try:
        private = serialization.load_pem_private_key(key_text.encode(), password=None)
    except TypeError:
        return _bad_key(
            pem_key,
            "the private key is encrypted with a passphrase",
            thumbprint,
            "decrypt it: openssl pkey -in encrypted.pem -out key.pem",
        )
    except ValueError:
        return _bad_key(
            pem_key,
            "the file holds no PEM private key",
            thumbprint,
            "put the unencrypted PEM (PKCS#8 or PKCS#1) private key there",
        )
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if private.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        return _bad_key(
            pem_key,
            "the private key does not belong to the certificate",
            thumbprint,
            f"put the key of the certificate with thumbprint {thumbprint} there",
        )
    until = leaf.not_valid_after_utc
    since = leaf.not_valid_before_utc
    stamp = dt.datetime.fromtimestamp(now, dt.UTC)
    upload = f"az ad app credential reset --id {tenant.client_id} --cert @<new.pem> --append"
    if until <= stamp or since > stamp:
        problem = (
            f"expired on {until:%Y-%m-%d}"
            if until <= stamp
            else f"valid only from {since:%Y-%m-%d}"
        )
        return CredentialResult(
            Finding.failed(
                f"certificate {thumbprint} {problem}",
                cause="Entra ID refuses assertions signed with a certificate outside its validity",
                fix=f"create a new certificate, upload it ({upload}) and replace both files",
                thumbprint=thumbprint,
            ),
            thumbprint=thumbprint,
        )
    days = (until - stamp).days
    soon = f"; rotate it soon ({upload})" if days < _SOON_DAYS else ""
    return CredentialResult(
        Finding.passed(
            f"certificate thumbprint {thumbprint}, valid until {until:%Y-%m-%d} "
            f"({days} days){soon}",
            thumbprint=thumbprint,
            not_after=f"{until:%Y-%m-%dT%H:%M:%SZ}",
        ),
        thumbprint=thumbprint,
    )


def _bad_key(key_path: str, cause: str, thumbprint: str, fix: str) -> CredentialResult:
    return CredentialResult(
        Finding.failed(f"{key_path}: unusable private key", cause=cause, fix=fix),
        thumbprint=thumbprint,
    )


def _check_federated(tenant: Tenant, path: Path, key: str, now: float) -> CredentialResult:
    key_path = f"{key}.federated_token_file"
    placing = _WORKLOAD_IDENTITY.format(client_id=tenant.client_id) + "; it must put the token"
    text = _read(path, key_path, "federated token", placing)
    try:
        claims = jwt.decode(text, options={"verify_signature": False})
    except jwt.PyJWTError:
        return CredentialResult(
            Finding.failed(
                f"{key_path}: {path} holds no JWT",
                cause="the file is not a projected service account token",
                fix=_WORKLOAD_IDENTITY.format(client_id=tenant.client_id),
            )
        )
    exp = claims.get("exp")
    aud = claims.get("aud")
    audience = ", ".join(str(a) for a in aud) if isinstance(aud, list) else aud
    who = f"issuer {claims.get('iss')}, subject {claims.get('sub')}, audience {audience}"
    if isinstance(exp, int | float) and exp <= now:
        return CredentialResult(
            Finding.failed(
                f"the federated token expired {now - exp:.0f} s ago ({who})",
                cause="nothing refreshes the file: it is a copy, or the projection is missing",
                fix=_WORKLOAD_IDENTITY.format(client_id=tenant.client_id)
                + "; the kubelet rewrites it before it expires",
            )
        )
    left = f", expires in {(exp - now) / 60:.0f} min" if isinstance(exp, int | float) else ""
    return CredentialResult(Finding.passed(f"federated token readable: {who}{left}"))
