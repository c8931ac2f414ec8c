"""``mailsyncd check`` against the local environment: a correct setup passes every step, and
each broken setup fails the right step with its specific hint (exit codes per the SPEC).

Every run is the real command as a subprocess; ``--json`` output is validated against the
schema kept in the repository. Changes to the identity platform are undone after each test.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from daemon.auth.hints import token_object_id
from daemon.store.engine import create_engine_for
from daemon.store.migrate import head_revision, migrate
from localenv import pki
from localenv.client import IdpControl
from localenv.env import FEDERATED_ISSUER, EnvInfo, free_port
from localenv.exchange_proxy import ExchangeProxy
from support.daemon import MAILSYNCD, MailboxSpec, make_config, through
from support.federated import projected_token_file

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "docs" / "check-output.schema.json").read_text())
CLI_TIMEOUT = 90
EVERY_STEP = {
    "config",
    "database",
    "credential",
    "token",
    "token.audience",
    "token.roles",
    "token.expiry",
    "imap.dns",
    "imap.tcp",
    "imap.tls",
    "imap.login",
    "imap.examine",
}


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    doc: dict[str, Any] | None

    def step(self, step_id: str, **where: str) -> dict[str, Any]:
        """The only step with this id (and tenant/mailbox/folder, if given)."""
        assert self.doc is not None
        found = [
            s
            for s in self.doc["steps"]
            if s["id"] == step_id and all(s[k] == v for k, v in where.items())
        ]
        assert len(found) == 1, f"{step_id} {where}: {found}"
        return found[0]

    def failed(self) -> list[str]:
        assert self.doc is not None
        return [s["id"] for s in self.doc["steps"] if s["status"] == "fail"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MAILSYNCD_")}


def _drop_root_read_override() -> list[str]:
    """A prefix that runs a command as root without the capability to read any file."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot make a file unreadable")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.fixture
def check(tmp_path: Path) -> Callable[..., Outcome]:
    """Returns ``run(config, *args, json_output=True, prefix=[])``: runs ``mailsyncd check``."""
    counter = iter(range(1000))

    def run(
        config: dict[str, Any],
        *args: str,
        json_output: bool = True,
        prefix: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> Outcome:
        path = tmp_path / f"check-{next(counter)}.yaml"
        path.write_text(yaml.safe_dump(config))
        argv = [*prefix, MAILSYNCD, "check", "-c", str(path), *args]
        if json_output:
            argv.append("--json")
        result = subprocess.run(
            argv,
            env={**_env(), **(env or {})},
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )
        doc = None
        if json_output:
            doc = json.loads(result.stdout)
            jsonschema.Draft202012Validator(SCHEMA).validate(doc)
            assert doc["ok"] == (result.returncode == 0)
        return Outcome(result.returncode, result.stdout, result.stderr, doc)

    return run


@pytest.fixture
def setup(
    env_info: EnvInfo, new_mailbox: Callable[..., str], tmp_path: Path
) -> Callable[..., dict[str, Any]]:
    """Returns a function building a correct config of one contoso mailbox (two with both)."""

    def make(
        *, both_tenants: bool = False, folders: tuple[str, ...] = ("INBOX",)
    ) -> dict[str, Any]:
        mailboxes = [MailboxSpec(new_mailbox("contoso.test"), "contoso", folders)]
        if both_tenants:
            mailboxes.append(MailboxSpec(new_mailbox("fabrikam.test"), "fabrikam"))
        config = make_config(
            env_info,
            database_url=f"sqlite:///{tmp_path / 'unused.db'}",
            mailboxes=mailboxes,
            http_port=free_port(),
        )
        if not both_tenants:
            config["tenants"] = config["tenants"][:1]
        return config

    return make


@pytest.fixture
def platform(idp: IdpControl, env_info: EnvInfo) -> Iterator[IdpControl]:
    """The identity platform's controls; every registered client of the tenants restored after."""
    yield idp
    for tenant in env_info.tenants:
        idp.update_client(
            tenant.tenant_id,
            tenant.client_id,
            set_={"secrets": [{"value": tenant.secret, "expires": None}]},
            unset=["roles", "audience", "service_principal", "federated_detail"],
        )


def _issued_tokens(idp: IdpControl) -> list[str]:
    return idp.issued_secrets()["tokens"]


# -- a correct setup --------------------------------------------------------------------------


def test_correct_setup_passes_every_step_and_exits_0(
    check: Callable[..., Outcome], setup: Callable[..., dict[str, Any]], env_info: EnvInfo
) -> None:
    config = setup(both_tenants=True)
    fabrikam = env_info.tenant("fabrikam")
    config["tenants"][1]["credential"] = {
        "certificate": {
            "private_key_file": fabrikam.private_key_file,
            "certificate_file": fabrikam.certificate_file,
        }
    }
    result = check(config)
    assert result.code == 0, result.stdout
    assert result.doc is not None
    assert {s["status"] for s in result.doc["steps"]} == {"pass"}
    assert {s["id"] for s in result.doc["steps"]} == EVERY_STEP
    assert result.doc["summary"] == {"pass": len(result.doc["steps"]), "fail": 0, "skip": 0}
    token = result.step("token", tenant="contoso")
    contoso = env_info.tenant("contoso")
    assert token["data"]["appid"] == contoso.client_id
    assert token["data"]["tid"] == contoso.tenant_id
    assert fabrikam.thumbprint in result.step("credential", tenant="fabrikam")["detail"]


def test_human_output_has_one_line_per_step_and_never_a_token_or_secret(
    check: Callable[..., Outcome],
    setup: Callable[..., dict[str, Any]],
    idp: IdpControl,
    env_info: EnvInfo,
) -> None:
    idp.clear_requests()
    result = check(setup(both_tenants=True), json_output=False)
    assert result.code == 0, result.stdout
    lines = result.stdout.splitlines()
    assert all(line.startswith("PASS  ") for line in lines[:-1]), result.stdout
    # config, database, 8 per tenant, 2 per mailbox, summary
    assert len(lines) == 2 + 2 * 8 + 2 * 2 + 1
    assert lines[-1].startswith("setup OK: ")
    output = result.stdout + result.stderr
    assert idp.requests(), "the check asked for no token"
    for secret in [*_issued_tokens(idp), *(t.secret for t in env_info.tenants)]:
        assert secret not in output


# -- the identity platform refuses the token request ------------------------------------------


def test_wrong_secret_fails_the_token_step_with_aadsts7000215(
    check: Callable[..., Outcome], setup: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    config = setup()
    wrong = tmp_path / "wrong-secret"
    wrong.write_text("Not~the.right-secret-value-0123456789abcd\n")
    config["tenants"][0]["credential"] = {"client_secret_file": str(wrong)}
    result = check(config)
    assert result.code == 1
    assert result.failed() == ["token"]
    token = result.step("token")
    assert token["data"]["aadsts"] == 7000215
    assert "AADSTS7000215" in token["cause"]
    assert "not its Secret ID" in token["fix"]
    assert str(wrong) in token["fix"]
    assert "az ad app credential reset" in token["fix"]
    assert "Not~the.right-secret" not in result.stdout + result.stderr
    for dependent in ("token.audience", "token.roles", "token.expiry", "imap.login"):
        assert result.step(dependent)["status"] == "skip"
        assert result.step(dependent)["data"]["blocked_by"] == "token"
    assert result.step("imap.tls")["status"] == "pass"  # the IMAP path does not need a token


def test_expired_secret_fails_the_token_step_with_aadsts7000222(
    check: Callable[..., Outcome],
    setup: Callable[..., dict[str, Any]],
    platform: IdpControl,
    env_info: EnvInfo,
) -> None:
    contoso = env_info.tenant("contoso")
    platform.update_client(
        contoso.tenant_id,
        contoso.client_id,
        set_={"secrets": [{"value": contoso.secret, "expires": time.time() - 60}]},
    )
    result = check(setup())
    assert result.code == 1
    assert result.failed() == ["token"]
    token = result.step("token")
    assert "AADSTS7000222" in token["cause"]
    assert "expired" in token["fix"]
    assert "Certificates & secrets" in token["fix"]


def test_unknown_client_fails_the_token_step_with_aadsts700016(
    check: Callable[..., Outcome], setup: Callable[..., dict[str, Any]]
) -> None:
    config = setup()
    unknown = str(uuid.uuid4())
    config["tenants"][0]["client_id"] = unknown
    result = check(config)
    assert result.code == 1
    assert result.failed() == ["token"]
    token = result.step("token")
    assert "AADSTS700016" in token["cause"]
    assert f"application {unknown} is not known" in token["fix"]


def test_unknown_tenant_fails_the_token_step_with_aadsts90002(
    check: Callable[..., Outcome], setup: Callable[..., dict[str, Any]]
) -> None:
    config = setup()
    unknown = str(uuid.uuid4())
    config["tenants"][0]["tenant_id"] = unknown
    result = check(config)
    assert result.code == 1
    assert result.failed() == ["token"]
    token = result.step("token")
    assert "AADSTS90002" in token["cause"]
    assert f"tenant {unknown} was not found" in token["fix"]


def test_unregistered_certificate_fails_with_aadsts700027_and_its_thumbprint(
    check: Callable[..., Outcome], setup: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    key, cert = pki.self_signed("not-uploaded")
    key_file = pki.write_private(tmp_path / "key.pem", pki.key_pem(key))
    cert_file = tmp_path / "cert.pem"
    cert_file.write_bytes(pki.cert_pem(cert))
    config = setup()
    config["tenants"][0]["credential"] = {
        "certificate": {"private_key_file": str(key_file), "certificate_file": str(cert_file)}
    }
    result = check(config)
    assert result.code == 1
    assert result.failed() == ["token"]
    thumbprint = pki.thumbprint(cert)
    assert thumbprint in result.step("credential")["detail"]
    token = result.step("token")
    assert "AADSTS700027" in token["cause"]
    assert thumbprint in token["fix"]
    assert f"--cert @{cert_file}" in token["fix"]


# -- the token is issued but wrong for IMAP ----------------------------------------------------


def test_token_without_the_imap_role_fails_token_roles_with_the_consent_fix(
    check: Callable[..., Outcome],
    setup: Callable[..., dict[str, Any]],
    platform: IdpControl,
    env_info: EnvInfo,
) -> None:
    contoso = env_info.tenant("contoso")
    platform.update_client(contoso.tenant_id, contoso.client_id, set_={"roles": []})
    result = check(setup())
    assert result.code == 1
    assert "token.roles" in result.failed()
    roles = result.step("token.roles")
    assert "IMAP.AccessAsApp" in roles["detail"]
    assert "admin consent" in roles["fix"]
    assert f"az ad app permission admin-consent --id {contoso.client_id}" in roles["fix"]
    assert result.step("token.audience")["status"] == "pass"


def test_token_for_the_wrong_audience_fails_and_the_refused_login_blames_the_token(
    check: Callable[..., Outcome],
    setup: Callable[..., dict[str, Any]],
    platform: IdpControl,
    env_info: EnvInfo,
) -> None:
    contoso = env_info.tenant("contoso")
    platform.update_client(
        contoso.tenant_id, contoso.client_id, set_={"audience": "https://graph.microsoft.com"}
    )
    result = check(setup())
    assert result.code == 1
    assert result.failed() == ["token.audience", "imap.login"]
    audience = result.step("token.audience")
    assert "https://graph.microsoft.com" in audience["detail"]
    assert "https://outlook.office365.com/.default" in audience["fix"]
    login = result.step("imap.login")
    assert "the token itself is wrong" in login["cause"]
    # The server's refusal alone would suggest Exchange permissions: the claims say otherwise.
    assert "Add-MailboxPermission" not in login["fix"]


def test_login_refused_with_a_good_token_names_the_exchange_commands_with_values(
    check: Callable[..., Outcome],
    setup: Callable[..., dict[str, Any]],
    platform: IdpControl,
    env_info: EnvInfo,
    tmp_path: Path,
) -> None:
    # The platform knows this client; Dovecot accepts only the tenant's original one, as
    # Exchange refuses an application without service principal or mailbox grant.
    contoso = env_info.tenant("contoso")
    client_id = str(uuid.uuid4())
    secret = f"second~{uuid.uuid4().hex}"
    platform.update_client(
        contoso.tenant_id, client_id, set_={"secrets": [{"value": secret, "expires": None}]}
    )
    secret_file = tmp_path / "second-secret"
    secret_file.write_text(secret)
    config = setup()
    config["tenants"][0]["client_id"] = client_id
    config["tenants"][0]["credential"] = {"client_secret_file": str(secret_file)}
    mailbox = config["mailboxes"][0]["address"]
    try:
        result = check(config)
    finally:
        platform.update_client(contoso.tenant_id, client_id, set_={"secrets": []})
    assert result.code == 1
    assert result.failed() == ["imap.login"]
    oid = result.step("token")["data"]["oid"]
    assert oid
    login = result.step("imap.login")
    assert "the token is right" in login["cause"]
    assert f"New-ServicePrincipal -AppId {client_id} -ObjectId {oid}" in login["fix"]
    assert (
        f"Add-MailboxPermission -Identity {mailbox} -User {oid} -AccessRights FullAccess"
        in login["fix"]
    )
    assert result.step("imap.examine")["data"]["blocked_by"] == "imap.login"


def test_app_without_service_principal_fails_the_token_step_with_sp_create(
    check: Callable[..., Outcome],
    setup: Callable[..., dict[str, Any]],
    platform: IdpControl,
    env_info: EnvInfo,
) -> None:
    contoso = env_info.tenant("contoso")
    platform.update_client(contoso.tenant_id, contoso.client_id, set_={"service_principal": False})
    result = check(setup())
    assert result.code == 1
    assert result.failed() == ["token"]
    token = result.step("token")
    assert token["data"]["aadsts"] == 7000229
    assert "AADSTS7000229 (no service principal in the tenant)" in token["cause"]
    assert f"az ad sp create --id {contoso.client_id}" in token["fix"]
    assert "admin consent" in token["fix"]


def test_federated_subject_mismatch_shows_the_presented_iss_and_sub_never_the_token(
    check: Callable[..., Outcome],
    setup: Callable[..., dict[str, Any]],
    platform: IdpControl,
    env_info: EnvInfo,
    tmp_path: Path,
) -> None:
    fabrikam = env_info.tenant("fabrikam")
    subject = "system:serviceaccount:elsewhere:mailsyncd"
    token_file = projected_token_file(env_info, tmp_path, subject=subject)
    projected = token_file.read_text()
    platform.update_client(fabrikam.tenant_id, fabrikam.client_id, set_={"federated_detail": True})
    config = setup(both_tenants=True)
    config["tenants"][1]["credential"] = {"federated_token_file": str(token_file)}
    result = check(config, "--mailbox", config["mailboxes"][1]["address"])
    assert result.code == 1
    assert result.failed() == ["token"]
    token = result.step("token", tenant="fabrikam")
    assert token["data"]["aadsts"] == 700213
    assert "federated credential subject does not match" in token["cause"]
    assert f"sub {subject}" in token["fix"]
    assert f"iss {FEDERATED_ISSUER}" in token["fix"]
    assert f"az ad app federated-credential list --id {fabrikam.client_id}" in token["fix"]
    for part in projected.split("."):
        assert part not in result.stdout + result.stderr


def test_mailbox_without_grant_answered_the_exchange_way_fails_login_with_the_grant(
    check: Callable[..., Outcome],
    setup: Callable[..., dict[str, Any]],
    env_info: EnvInfo,
    exchange: ExchangeProxy,
    idp: IdpControl,
) -> None:
    config = setup()
    config.update(through(env_info, exchange.port))
    config["tenants"] = config["tenants"][:1]
    mailbox = config["mailboxes"][0]["address"]
    exchange.deny_mailbox(mailbox)
    result = check(config)
    assert result.code == 1
    # Exchange accepts AUTHENTICATE and refuses the next command: the login step sends one.
    assert result.failed() == ["imap.login"]
    assert exchange.logins_of(mailbox) == 1
    oid = result.step("token")["data"]["oid"]
    assert oid
    assert oid == token_object_id(idp.issued_secrets()["tokens"][-1])
    login = result.step("imap.login")
    assert "User is authenticated but not connected" in login["detail"]
    assert f"has no rights on {mailbox}" in login["cause"]
    assert (
        f"Add-MailboxPermission -Identity {mailbox} -User {oid} -AccessRights FullAccess"
        in login["fix"]
    )
    assert "<" not in login["fix"]
    assert result.step("imap.examine")["data"]["blocked_by"] == "imap.login"


# -- the database (optional: check needs none) -------------------------------------------------

UNSET_VARIABLE = "MAILSYNCD_TEST_DATABASE_URL"  # _env() drops every MAILSYNCD_ variable


def test_database_url_env_unset_skips_the_database_step_and_checks_the_rest(
    check: Callable[..., Outcome], setup: Callable[..., dict[str, Any]]
) -> None:
    config = setup()
    config["database"] = {"url_env": UNSET_VARIABLE}
    result = check(config)
    assert result.code == 0, result.stdout
    database = result.step("database")
    assert database["status"] == "skip"
    assert database["data"]["variable"] == UNSET_VARIABLE
    assert UNSET_VARIABLE in database["detail"]
    assert result.step("imap.examine")["status"] == "pass"
    human = check(config, json_output=False)
    assert human.code == 0, human.stdout + human.stderr


def test_database_at_head_passes_and_an_empty_one_says_run_creates_the_schema(
    check: Callable[..., Outcome],
    setup: Callable[..., dict[str, Any]],
    make_sqlite_url: Callable[[], str],
    make_pg_url: Callable[[], str],
) -> None:
    migrated = make_sqlite_url()
    engine = create_engine_for(migrated)
    try:
        migrate(engine)
    finally:
        engine.dispose()
    config = setup()
    config["database"] = {"url_env": UNSET_VARIABLE}
    at_head = check(config, env={UNSET_VARIABLE: migrated})
    assert at_head.code == 0, at_head.stdout
    database = at_head.step("database")
    assert database["status"] == "pass"
    assert database["data"]["revision"] == database["data"]["head"] == head_revision()
    empty_pg = make_pg_url()
    config["database"] = {"url": empty_pg}
    empty = check(config)
    assert empty.code == 0, empty.stdout
    assert "no mailsyncd schema yet" in empty.step("database")["detail"]
    assert empty.step("database")["data"]["revision"] is None


def test_unreachable_database_fails_its_step_without_showing_the_password(
    check: Callable[..., Outcome], setup: Callable[..., dict[str, Any]]
) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    url = f"postgresql+psycopg://mailsyncd:{password}@127.0.0.1:{free_port()}/mailsyncd"
    config = setup()
    config["database"] = {"url_env": UNSET_VARIABLE}
    result = check(config, env={UNSET_VARIABLE: url})
    assert result.code == 1
    assert result.failed() == ["database"]
    database = result.step("database")
    assert "cannot be reached" in database["cause"]
    assert password not in result.stdout + result.stderr
    assert result.step("imap.examine")["status"] == "pass"  # the rest still runs


# -- IMAP: folders, TLS, network ---------------------------------------------------------------


def test_missing_folder_fails_its_examine_and_lists_the_folders_there_are(
    check: Callable[..., Outcome], setup: Callable[..., dict[str, Any]]
) -> None:
    result = check(setup(folders=("INBOX", "No Such Folder")))
    assert result.code == 1
    assert result.failed() == ["imap.examine"]
    assert result.step("imap.examine", folder="INBOX")["status"] == "pass"
    missing = result.step("imap.examine", folder="No Such Folder")
    assert "No Such Folder" in missing["cause"]
    assert "mailboxes[0].folders" in missing["fix"]
    assert "INBOX" in missing["fix"]


def test_ca_that_does_not_verify_the_server_fails_tls_with_the_tls_ca_file_fix(
    check: Callable[..., Outcome], setup: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    other = tmp_path / "other-ca.pem"
    other.write_bytes(pki.cert_pem(pki.CertificateAuthority.create("another CA").cert))
    config = setup()
    config["tls"]["ca_file"] = str(other)
    result = check(config)
    assert result.code == 1
    tls = result.step("imap.tls")
    assert tls["status"] == "fail"
    assert "tls.ca_file" in tls["fix"]
    assert str(other) in tls["fix"]
    # The identity platform is verified against the same file, and says so.
    assert "tls.ca_file" in result.step("token")["fix"]
    assert result.step("imap.login")["status"] == "skip"


def test_closed_port_fails_tcp_and_skips_what_depends_on_it(
    check: Callable[..., Outcome], setup: Callable[..., dict[str, Any]]
) -> None:
    config = setup()
    port = free_port()  # nothing listens there once the probe socket is closed
    config["tenants"][0]["imap"]["port"] = port
    result = check(config)
    assert result.code == 1
    assert result.failed() == ["imap.tcp"]
    tcp = result.step("imap.tcp")
    assert "refused" in tcp["detail"]
    assert "tenants[0].imap.port" in tcp["fix"]
    assert result.step("imap.tls")["data"]["blocked_by"] == "imap.tcp"
    assert result.step("imap.login")["data"]["blocked_by"] == "imap.tls"


# -- credentials -------------------------------------------------------------------------------


def test_missing_secret_file_is_a_failed_step_not_a_config_error(
    check: Callable[..., Outcome], setup: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    config = setup()
    missing = tmp_path / "secrets" / "client-secret"
    config["tenants"][0]["credential"] = {"client_secret_file": str(missing)}
    result = check(config)
    assert result.code == 1
    assert result.failed() == ["credential"]
    credential = result.step("credential")
    assert "does not exist" in credential["detail"]
    assert "tenants[0].credential.client_secret_file" in credential["fix"]
    assert str(missing) in credential["fix"]
    assert result.step("token")["data"]["blocked_by"] == "credential"


def test_unreadable_secret_file_is_a_failed_step_with_the_permission_fix(
    check: Callable[..., Outcome],
    setup: Callable[..., dict[str, Any]],
    env_info: EnvInfo,
    tmp_path: Path,
) -> None:
    prefix = _drop_root_read_override()
    unreadable = tmp_path / "client-secret"
    unreadable.write_text(env_info.tenant("contoso").secret)
    unreadable.chmod(0)
    config = setup()
    config["tenants"][0]["credential"] = {"client_secret_file": str(unreadable)}
    result = check(config, prefix=prefix)
    assert result.code == 1
    assert result.failed() == ["credential"]
    credential = result.step("credential")
    assert "not readable" in credential["detail"]
    assert "mode 0000" in credential["cause"]
    assert f"chmod 0400 {unreadable}" in credential["fix"]


def test_unset_secret_variable_is_a_failed_step(
    check: Callable[..., Outcome], setup: Callable[..., dict[str, Any]]
) -> None:
    config = setup()
    config["tenants"][0]["credential"] = {"client_secret_env": "MAILSYNCD_TEST_SURELY_UNSET"}
    result = check(config)
    assert result.code == 1
    assert result.failed() == ["credential"]
    assert "MAILSYNCD_TEST_SURELY_UNSET" in result.step("credential")["fix"]


# -- command line ------------------------------------------------------------------------------


def test_token_step_is_bounded_by_the_timeout(
    check: Callable[..., Outcome], setup: Callable[..., dict[str, Any]], idp: IdpControl
) -> None:
    idp.fail(count=5, delay=15)
    started = time.monotonic()
    result = check(setup(), "--timeout", "2")
    assert time.monotonic() - started < 12
    assert result.code == 1
    token = result.step("token")
    assert "no answer within 2 s" in token["detail"]
    assert "--timeout" in token["fix"]


def test_mailbox_option_checks_only_that_mailbox_and_its_tenant(
    check: Callable[..., Outcome], setup: Callable[..., dict[str, Any]]
) -> None:
    config = setup(both_tenants=True)
    wanted = config["mailboxes"][1]["address"]
    result = check(config, "--mailbox", wanted.upper())
    assert result.code == 0, result.stdout
    assert result.doc is not None
    assert {s["tenant"] for s in result.doc["steps"][2:]} == {"fabrikam"}
    assert {s["mailbox"] for s in result.doc["steps"] if s["mailbox"]} == {wanted}


def test_unknown_mailbox_option_exits_2(
    check: Callable[..., Outcome], setup: Callable[..., dict[str, Any]]
) -> None:
    result = check(setup(), "--mailbox", "nobody@contoso.test")
    assert result.code == 2
    assert result.failed() == ["config"]
    assert "nobody@contoso.test" in result.step("config")["cause"]
    human = check(setup(), "--mailbox", "nobody@contoso.test", json_output=False)
    assert human.code == 2
    assert "nobody@contoso.test" in human.stderr


def test_config_that_does_not_validate_exits_2_with_every_key_path(
    check: Callable[..., Outcome], setup: Callable[..., dict[str, Any]]
) -> None:
    config = copy.deepcopy(setup())
    config["mailboxes"][0]["tenant"] = "nosuchtenant"
    config["limits"] = {"fetch_batch_size": 0}
    result = check(config)
    assert result.code == 2
    cause = result.step("config")["cause"]
    assert "mailboxes[0].tenant" in cause
    assert "limits.fetch_batch_size" in cause
    human = check(config, json_output=False)
    assert human.code == 2
    assert "mailboxes[0].tenant" in human.stderr


def test_failure_in_human_output_shows_cause_and_fix_under_the_line(
    check: Callable[..., Outcome], setup: Callable[..., dict[str, Any]]
) -> None:
    config = setup()
    config["tenants"][0]["imap"]["port"] = free_port()
    result = check(config, json_output=False)
    assert result.code == 1
    lines = result.stdout.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("FAIL  imap.tcp"))
    assert lines[index + 1].strip().startswith("cause: nothing listens on port")
    assert lines[index + 2].strip().startswith("fix:")
    assert any(line.startswith("SKIP  imap.tls") for line in lines)
    assert lines[-1].startswith("setup has problems: ")


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
