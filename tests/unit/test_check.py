"""The pure part of ``mailsyncd check``: claims, refusals and errors to cause and fix."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import jsonschema
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from daemon.auth.hints import hint_for
from daemon.check import diagnose
from daemon.check.credential import check_credential
from daemon.check.model import Finding, Step, format_step, json_document
from daemon.config import Tenant, config_from_mapping
from daemon.errors import (
    AuthFailed,
    ImapConnectionError,
    ImapProtocolError,
    MailboxAccessDenied,
    Throttled,
    TokenExpiredOnServer,
    TokenRejected,
    TokenUnavailable,
)
from localenv import pki

REPO = Path(__file__).resolve().parents[2]
TENANT_ID = "11111111-2222-3333-4444-555555555555"
CLIENT_ID = "66666666-7777-8888-9999-000000000000"
OID = "abcdefab-cdef-abcd-efab-cdefabcdefab"
MAILBOX = "support@contoso.com"
KEY = "tenants[0]"
HMAC_KEY = "a test key that is long enough for HS256 in PyJWT"


def make_tenant(**overrides: Any) -> Tenant:
    entry = {
        "name": "contoso",
        "tenant_id": TENANT_ID,
        "client_id": CLIENT_ID,
        "credential": {"client_secret_file": "/run/secrets/contoso-client-secret"},
        **overrides,
    }
    data = {"database": {"url": "sqlite:///x.db"}, "tenants": [entry], "mailboxes": []}
    return config_from_mapping(data, check_secrets=False).tenants[0]


def make_claims(**overrides: Any) -> diagnose.Claims:
    values: dict[str, Any] = {
        "audiences": ("https://outlook.office365.com",),
        "roles": ("IMAP.AccessAsApp",),
        "expires_at": time.time() + 3600,
        "appid": CLIENT_ID,
        "oid": OID,
        "tid": TENANT_ID,
    }
    values.update(overrides)
    return diagnose.Claims(**values)


# -- claims ------------------------------------------------------------------------------------


def test_decode_claims_reads_an_unverified_token() -> None:
    token = jwt.encode(
        {
            "aud": "https://outlook.office365.com",
            "roles": ["IMAP.AccessAsApp"],
            "exp": 2_000_000_000,
            "appid": CLIENT_ID,
            "oid": OID,
            "tid": TENANT_ID,
        },
        HMAC_KEY,
        algorithm="HS256",
    )
    claims = diagnose.decode_claims(token)
    assert claims == diagnose.Claims(
        audiences=("https://outlook.office365.com",),
        roles=("IMAP.AccessAsApp",),
        expires_at=2_000_000_000.0,
        appid=CLIENT_ID,
        oid=OID,
        tid=TENANT_ID,
    )


def test_decode_claims_of_an_expired_v2_token_uses_azp_and_a_list_audience() -> None:
    token = jwt.encode({"aud": ["a", "b"], "azp": CLIENT_ID, "exp": 1}, HMAC_KEY, algorithm="HS256")
    claims = diagnose.decode_claims(token)
    assert claims is not None
    assert claims.audiences == ("a", "b")
    assert claims.appid == CLIENT_ID
    assert claims.roles == ()


def test_decode_claims_of_something_else_is_none() -> None:
    assert diagnose.decode_claims("EwBwA8l6BAAU.opaque") is None


@pytest.mark.parametrize(
    "audience",
    ["https://outlook.office365.com", "https://outlook.office365.com/", diagnose.EXCHANGE_APP_ID],
)
def test_exchange_audiences_pass(audience: str) -> None:
    finding = diagnose.check_audience(make_claims(audiences=(audience,)), make_tenant(), KEY)
    assert finding.status == "pass"


def test_wrong_audience_with_the_right_scope_blames_where_the_token_came_from() -> None:
    claims = make_claims(audiences=("https://graph.microsoft.com",))
    finding = diagnose.check_audience(claims, make_tenant(), KEY)
    assert finding.status == "fail"
    assert "https://graph.microsoft.com" in finding.detail
    assert finding.fix is not None
    assert "https://outlook.office365.com/.default" in finding.fix
    assert "tenants[0].authority_host" in finding.fix


def test_scope_of_another_resource_fails_even_when_the_audience_matches_it() -> None:
    tenant = make_tenant(scope="https://graph.microsoft.com/.default")
    claims = make_claims(audiences=("https://graph.microsoft.com",))
    finding = diagnose.check_audience(claims, tenant, KEY)
    assert finding.status == "fail"
    assert finding.fix == (
        "set tenants[0].scope to https://outlook.office365.com/.default "
        "(now https://graph.microsoft.com/.default)"
    )


@pytest.mark.parametrize("audience", ["https://outlook.office.com", diagnose.EXCHANGE_APP_ID])
def test_outlook_office_com_scope_against_outlook_office365_com_passes_with_a_warning(
    audience: str,
) -> None:
    # Microsoft Learn's IMAP OAuth examples use https://outlook.office.com scopes with
    # outlook.office365.com: nothing documented says the host refuses that audience.
    tenant = make_tenant(scope="https://outlook.office.com/.default")
    finding = diagnose.check_audience(make_claims(audiences=(audience,)), tenant, KEY)
    assert finding.status == "pass"
    warning = str(finding.data["warning"])
    assert "https://outlook.office365.com/.default" in warning
    assert "tenants[0].scope" in warning
    assert f"warning: {warning}" in finding.detail


def test_missing_role_fails_with_consent_steps_for_this_application() -> None:
    finding = diagnose.check_roles(make_claims(roles=("Mail.Read",)), make_tenant())
    assert finding.status == "fail"
    assert "roles: Mail.Read" in finding.detail
    assert finding.fix is not None
    assert "Grant admin consent" in finding.fix
    assert f"App registrations > {CLIENT_ID} > API permissions" in finding.fix
    assert f"az ad app permission admin-consent --id {CLIENT_ID}" in finding.fix


def test_expired_token_blames_the_clock() -> None:
    now = time.time()
    finding = diagnose.check_expiry(make_claims(expires_at=now - 120), now)
    assert finding.status == "fail"
    assert finding.cause is not None
    assert "clock" in finding.cause
    assert diagnose.check_expiry(make_claims(expires_at=now + 3600), now).status == "pass"


# -- refused logins: the token decides, not the server's text ----------------------------------


def test_refused_login_with_good_claims_names_service_principal_and_grant_with_values() -> None:
    finding = diagnose.diagnose_login(
        AuthFailed("XOAUTH2 login rejected: AUTHENTICATE failed."),
        tenant=make_tenant(),
        mailbox=MAILBOX,
        claims=make_claims(),
        claim_failures=[],
        logged_in_before=None,
    )
    assert finding.status == "fail"
    assert finding.fix is not None
    assert f"New-ServicePrincipal -AppId {CLIENT_ID} -ObjectId {OID}" in finding.fix
    assert f"Add-MailboxPermission -Identity {MAILBOX} -User {OID} -AccessRights FullAccess" in (
        finding.fix
    )
    assert f"signed in to tenant {TENANT_ID} as an Exchange administrator" in finding.fix
    assert "Connect-ExchangeOnline -UserPrincipalName" in finding.fix
    assert "-Organization" not in finding.fix  # that is for app-only connections


def test_refused_login_after_another_mailbox_logged_in_blames_only_the_grant() -> None:
    finding = diagnose.diagnose_login(
        AuthFailed("XOAUTH2 login rejected: AUTHENTICATE failed."),
        tenant=make_tenant(),
        mailbox=MAILBOX,
        claims=make_claims(),
        claim_failures=[],
        logged_in_before="sales@contoso.com",
    )
    assert finding.cause is not None
    assert "sales@contoso.com logged in" in finding.cause
    assert finding.fix is not None
    assert "New-ServicePrincipal" not in finding.fix
    assert "Add-MailboxPermission" in finding.fix


def test_refused_login_with_bad_claims_gives_the_claims_fix_instead() -> None:
    tenant = make_tenant()
    bad = diagnose.check_roles(make_claims(roles=()), tenant)
    finding = diagnose.diagnose_login(
        AuthFailed("XOAUTH2 login rejected: AUTHENTICATE failed."),
        tenant=tenant,
        mailbox=MAILBOX,
        claims=make_claims(roles=()),
        claim_failures=[bad],
        logged_in_before=None,
    )
    assert finding.cause is not None
    assert "the token itself is wrong" in finding.cause
    assert finding.fix == bad.fix
    assert "Add-MailboxPermission" not in finding.fix


def test_authenticated_but_not_connected_is_the_mailbox_grant() -> None:
    finding = diagnose.diagnose_login(
        MailboxAccessDenied("IMAP login: token accepted, mailbox refused"),
        tenant=make_tenant(),
        mailbox=MAILBOX,
        claims=None,
        claim_failures=[],
        logged_in_before=None,
    )
    assert finding.fix is not None
    assert f"Add-MailboxPermission -Identity {MAILBOX} -User {diagnose.OID_PLACEHOLDER}" in (
        finding.fix
    )
    assert f"az ad sp show --id {CLIENT_ID} --query id -o tsv" in finding.fix


def test_mailbox_refused_after_login_is_the_grant_not_an_unknown_error() -> None:
    # Exchange answers the command after AUTHENTICATE; where that is EXAMINE, the same fix.
    hint = f"Add-MailboxPermission -Identity {MAILBOX} -User {OID} -AccessRights FullAccess"
    error = MailboxAccessDenied("IMAP examine: token accepted, mailbox refused", hint=hint)
    finding = diagnose.diagnose_session_error(error, tenant=make_tenant(), what="EXAMINE")
    assert "does not know" not in (finding.cause or "")
    assert "no FullAccess" in (finding.cause or "")
    assert finding.fix == hint


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (TokenExpiredOnServer("the server ended the session"), "clock"),
        (Throttled("throttled", retry_after=2.0), "wait 2 s"),
        (ImapConnectionError("reset", hint="check imap.host"), "check imap.host"),
        (ImapProtocolError("BAD Command Argument Error. 11"), "run check again"),
    ],
)
def test_other_login_errors_are_not_blamed_on_permissions(error: Any, expected: str) -> None:
    finding = diagnose.diagnose_login(
        error,
        tenant=make_tenant(),
        mailbox=MAILBOX,
        claims=make_claims(),
        claim_failures=[],
        logged_in_before=None,
    )
    assert finding.status == "fail"
    assert expected in f"{finding.cause} {finding.fix}"
    assert "Add-MailboxPermission" not in (finding.fix or "")


# -- token request refusals --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "fragments"),
    [
        (7000215, ["not its Secret ID", "az ad app credential reset"]),
        (7000222, ["expired", "az ad app credential reset"]),
        (700016, [f"application {CLIENT_ID} is not known in tenant {TENANT_ID}"]),
        (90002, [f"tenant {TENANT_ID} was not found", "openid-configuration"]),
        (700027, ["thumbprint", "az ad app credential list"]),
        (70021, ["federated", "az ad app federated-credential list"]),
        (1002012, ["https://outlook.office365.com/.default"]),
    ],
)
def test_aadsts_codes_get_their_hint_and_command(code: int, fragments: list[str]) -> None:
    tenant = make_tenant()
    error = TokenRejected("refused", code=code, hint=None)
    finding = diagnose.diagnose_token_error(error, tenant=tenant, key=KEY)
    assert finding.cause is not None
    assert f"AADSTS{code}" in finding.cause
    assert finding.data["aadsts"] == code
    for fragment in fragments:
        assert fragment in (finding.fix or "")


def test_no_service_principal_names_sp_create_and_admin_consent_with_the_client_id() -> None:
    finding = diagnose.diagnose_token_error(
        TokenRejected("refused", code=7000229), tenant=make_tenant(), key=KEY
    )
    assert "no service principal" in (finding.cause or "")
    assert f"az ad sp create --id {CLIENT_ID}" in (finding.fix or "")
    assert "admin consent" in (finding.fix or "")
    assert f"adminconsent?client_id={CLIENT_ID}" in (finding.fix or "")


@pytest.mark.parametrize(
    ("code", "what"), [(700211, "issuer"), (700212, "audience"), (700213, "subject")]
)
def test_federated_mismatch_codes_are_named_and_keep_the_adapters_hint(
    code: int, what: str
) -> None:
    hint = "no federated credential matches: the projected token presents iss X, sub Y"
    tenant = make_tenant(credential={"federated_token_file": "/var/run/token"})
    error = TokenRejected("refused", code=code, hint=hint)
    finding = diagnose.diagnose_token_error(error, tenant=tenant, key=KEY)
    assert f"federated credential {what} does not match" in (finding.cause or "")
    assert finding.fix == hint


def test_code_without_a_hint_shows_entras_description_and_the_code_page() -> None:
    text = "AADSTS7002138: No matching federated identity record found for presented assertion."
    error = TokenRejected("refused", code=7002138, hint=text, description=text)
    finding = diagnose.diagnose_token_error(error, tenant=make_tenant(), key=KEY)
    assert finding.cause == (
        "the identity platform refused the token request: AADSTS7002138 (No matching "
        "federated identity record found for presented assertion.)"
    )
    assert finding.detail.count("AADSTS7002138") == 1
    assert "https://login.microsoftonline.com/error?code=7002138" in (finding.fix or "")


def test_adapter_hint_is_kept_and_a_guid_secret_is_called_out() -> None:
    hint = hint_for(7000215, secret_source="X")
    error = TokenRejected("refused", code=7000215, hint=hint)
    finding = diagnose.diagnose_token_error(
        error, tenant=make_tenant(), key=KEY, secret_is_guid=True
    )
    assert finding.fix is not None
    assert hint is not None
    assert finding.fix.startswith(hint)
    assert "the secret's ID" in (finding.cause or "")


def test_tls_failure_towards_the_identity_platform_names_tls_ca_file() -> None:
    error = TokenUnavailable("token request failed: SSLError", hint="TLS verification failed")
    finding = diagnose.diagnose_token_error(
        error, tenant=make_tenant(), key=KEY, ca_file="/etc/ca.pem"
    )
    assert "tls.ca_file (/etc/ca.pem)" in (finding.cause or "")
    assert "set tls.ca_file" in (finding.fix or "")


def test_unreachable_platform_and_codeless_refusal_are_told_apart() -> None:
    tenant = make_tenant()
    down = diagnose.diagnose_token_error(
        TokenUnavailable("token request failed: ConnectionError"), tenant=tenant, key=KEY
    )
    assert "could not be reached" in (down.cause or "")
    assert "https://login.microsoftonline.com" in (down.fix or "")
    refused = diagnose.diagnose_token_error(
        TokenRejected("cannot read the credential", code=None, hint=None), tenant=tenant, key=KEY
    )
    assert "without an AADSTS code" in (refused.cause or "")
    assert "tenants[0].credential" in (refused.fix or "")


def test_folder_missing_lists_the_server_folders_and_the_key() -> None:
    finding = diagnose.folder_missing("Sent", MAILBOX, ["INBOX", "Sent Items"], "defaults.folders")
    assert (
        finding.fix == "correct defaults.folders; the folders the server lists: INBOX, Sent Items"
    )


# -- credential files --------------------------------------------------------------------------


def test_secret_file_that_is_a_directory_says_so(tmp_path: Path) -> None:
    tenant = make_tenant(credential={"client_secret_file": str(tmp_path)})
    finding = check_credential(tenant, KEY).finding
    assert finding.status == "fail"
    assert "is a directory" in finding.detail


def test_empty_secret_file_fails_and_a_guid_secret_is_noticed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("\n")
    tenant = make_tenant(credential={"client_secret_file": str(secret)})
    assert "is empty" in check_credential(tenant, KEY).finding.detail
    secret.write_text(OID + "\n")
    result = check_credential(tenant, KEY)
    assert result.finding.status == "pass"
    assert result.secret_is_guid


def _certificate_files(tmp_path: Path, *, other_key: bool = False) -> dict[str, Any]:
    key, cert = pki.self_signed("unit")
    if other_key:
        key = pki.new_key()
    key_file = pki.write_private(tmp_path / "key.pem", pki.key_pem(key))
    cert_file = tmp_path / "cert.pem"
    cert_file.write_bytes(pki.cert_pem(cert))
    return {"certificate": {"private_key_file": str(key_file), "certificate_file": str(cert_file)}}


def test_certificate_shows_its_thumbprint_and_fails_once_expired(tmp_path: Path) -> None:
    tenant = make_tenant(credential=_certificate_files(tmp_path))
    cert_file = tenant.credential.certificate.certificate_file
    thumbprint = pki.thumbprint(x509.load_pem_x509_certificate(cert_file.read_bytes()))
    result = check_credential(tenant, KEY)
    assert result.finding.status == "pass"
    assert result.thumbprint == thumbprint
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=60)).timestamp()
    expired = check_credential(tenant, KEY, now=later).finding
    assert expired.status == "fail"
    assert "expired" in expired.detail


def test_key_of_another_certificate_fails(tmp_path: Path) -> None:
    tenant = make_tenant(credential=_certificate_files(tmp_path, other_key=True))
    finding = check_credential(tenant, KEY).finding
    assert finding.status == "fail"
    assert finding.cause == "the private key does not belong to the certificate"


def test_encrypted_key_fails_with_the_openssl_fix(tmp_path: Path) -> None:
    files = _certificate_files(tmp_path)
    key_file = Path(files["certificate"]["private_key_file"])
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    finding = check_credential(make_tenant(credential=files), KEY).finding
    assert finding.status == "fail"
    assert "openssl pkey" in (finding.fix or "")


# -- the report --------------------------------------------------------------------------------


def test_failed_step_prints_cause_and_fix_lines_under_it() -> None:
    step = Step(
        "imap.tcp", "fail", "refused", tenant="contoso", cause="closed", fix="line one\nline two"
    )
    assert format_step(step).splitlines() == [
        "FAIL  imap.tcp       contoso: refused",
        "      cause: closed",
        "      fix:   line one",
        "             line two",
    ]


def test_json_document_matches_the_schema_and_ok_follows_the_failures() -> None:
    schema = json.loads((REPO / "docs" / "check-output.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    passed = Step("config", "pass", "valid")
    failing = Finding.failed("refused", cause="c", fix="f", aadsts=7000215)
    failed = Step(
        "token",
        failing.status,
        failing.detail,
        tenant="contoso",
        cause=failing.cause,
        fix=failing.fix,
        data=failing.data,
    )
    good = json_document([passed], config="/etc/mailsyncd.yaml")
    bad = json_document([passed, failed], config=None)
    validator.validate(good)
    validator.validate(bad)
    assert good["ok"] is True
    assert bad["ok"] is False
    lying = dict(bad, ok=True)
    assert not validator.is_valid(lying)
    no_fix = json_document([Step("token", "fail", "refused", tenant="contoso")], config=None)
    assert not validator.is_valid(no_fix)
