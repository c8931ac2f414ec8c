"""Configuration loading: the SPEC's contract for keys, key paths and secrets."""

from __future__ import annotations

import copy
import math
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.config import (
    Config,
    ConfigError,
    ConfigIssue,
    MailboxSettings,
    SecretReadError,
    config_from_mapping,
    format_errors,
    load_config,
    parse_duration,
)

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t~Value.0123456789abcdefghijklmnop"  # shaped like an Entra ID client secret

SPEC_EXAMPLE = """\
database:
  url: postgresql+psycopg://mailsyncd@db/mailsyncd   # or sqlite:///var/lib/mailsyncd/mailsyncd.db
  # url_env: DATABASE_URL                              # alternative: read the URL from a variable
http:
  listen: 0.0.0.0:9464          # serves /metrics, /healthz, /readyz
tls:
  ca_file: null                 # extra CA bundle for every outbound TLS (identity platform, IMAP)
logging:
  level: info                   # debug|info|warning|error
  format: auto                  # json|console|auto (console on a terminal, else json)
defaults:                       # every mailbox inherits these
  poll_interval: 60s            # accepts 30, 30s, 5m, 1h; at least 1s
  full_scan_interval: 15m       # how often flags and expunges are reconciled by a full UID/FLAGS scan
  folders: [INBOX]              # a mailbox's own `folders` replaces this list
  backfill_days: null           # null: the whole folder on first sync
tenants:
  - name: contoso               # label used in metrics and logs
    tenant_id: 00000000-0000-0000-0000-000000000000   # GUID or verified domain
    client_id: 00000000-0000-0000-0000-000000000000
    credential:                 # exactly one of:
      client_secret_file: {secret_file}
      # client_secret_env: CONTOSO_CLIENT_SECRET
      # certificate: {{private_key_file: /run/secrets/key.pem, certificate_file: /run/secrets/cert.pem}}
      # federated_token_file: /var/run/secrets/azure/tokens/azure-identity-token
    authority_host: https://login.microsoftonline.com   # sovereign clouds, tests
    scope: https://outlook.office365.com/.default
    imap: {{host: outlook.office365.com, port: 993}}
mailboxes:
  - address: support@contoso.com
    tenant: contoso
    folders: [INBOX, Sent Items]
    poll_interval: 30s
"""  # noqa: E501 - the SPEC's example, verbatim


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    """A directory holding every secret file the valid document names."""
    directory = tmp_path / "secrets"
    directory.mkdir()
    (directory / "client-secret").write_text(SECRET + "\n")
    # A placeholder, not a key (spelled in pieces so that secret scanners stay quiet).
    pem_label = "PRIVATE" + " KEY"
    (directory / "key.pem").write_text(
        f"-----BEGIN {pem_label}-----\nkey\n-----END {pem_label}-----\n"
    )
    (directory / "cert.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nc\n-----END CERTIFICATE-----\n"
    )
    (directory / "token").write_text("federated.jwt.token\n")
    return directory


def valid_document(secrets: Path) -> dict[str, Any]:
    """A configuration with every credential kind and four mailboxes (so `mailboxes[3]` exists)."""
    return {
        "database": {"url": "sqlite:///mailsyncd.db"},
        "tenants": [
            {
                "name": "contoso",
                "tenant_id": "00000000-0000-0000-0000-000000000000",
                "client_id": "00000000-0000-0000-0000-000000000001",
                "credential": {"client_secret_file": str(secrets / "client-secret")},
            },
            {
                "name": "fabrikam",
                "tenant_id": "fabrikam.onmicrosoft.com",
                "client_id": "00000000-0000-0000-0000-000000000002",
                "credential": {
                    "certificate": {
                        "private_key_file": str(secrets / "key.pem"),
                        "certificate_file": str(secrets / "cert.pem"),
                    }
                },
            },
            {
                "name": "northwind",
                "tenant_id": "00000000-0000-0000-0000-000000000003",
                "client_id": "00000000-0000-0000-0000-000000000003",
                "credential": {"federated_token_file": str(secrets / "token")},
            },
        ],
        "mailboxes": [
            {"address": "support@contoso.com", "tenant": "contoso"},
            {"address": "sales@contoso.com", "tenant": "contoso"},
            {"address": "info@fabrikam.com", "tenant": "fabrikam"},
            {"address": "ops@northwind.com", "tenant": "northwind"},
        ],
    }


Mutation = Callable[[dict[str, Any]], None]


def _walk(doc: Any, path: str) -> tuple[Any, str | int]:
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    for step in parents:
        doc = doc[step]
    return doc, last


def put(path: str, value: Any) -> Mutation:
    """Set the value at a dotted path (list indexes as numbers)."""

    def mutate(doc: dict[str, Any]) -> None:
        parent, key = _walk(doc, path)
        parent[key] = value

    return mutate


def drop(path: str) -> Mutation:
    """Delete the key at a dotted path."""

    def mutate(doc: dict[str, Any]) -> None:
        parent, key = _walk(doc, path)
        del parent[key]

    return mutate


@pytest.fixture
def write_yaml(tmp_path: Path) -> Callable[[object], Path]:
    """Return a function writing a document (or YAML text) to a file and returning its path."""

    def write(document: object, name: str = "mailsyncd.yaml") -> Path:
        path = tmp_path / name
        text = document if isinstance(document, str) else yaml.safe_dump(document)
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def broken(secrets_dir: Path, write_yaml: Callable[[object], Path]) -> Callable[..., ConfigError]:
    """Return a function applying mutations to the valid document and returning its error."""

    def load_broken(*mutations: Mutation, environ: dict[str, str] | None = None) -> ConfigError:
        doc = copy.deepcopy(valid_document(secrets_dir))
        for mutate in mutations:
            mutate(doc)
        with pytest.raises(ConfigError) as info:
            load_config(write_yaml(doc), environ or {"DATABASE_URL": "sqlite://"})
        return info.value

    return load_broken


def paths(err: ConfigError) -> list[str]:
    return [issue.path for issue in err.errors]


# -- the happy path ----------------------------------------------------------------------------


def test_spec_example_loads_with_its_values(
    tmp_path: Path, write_yaml: Callable[..., Path]
) -> None:
    secret = tmp_path / "contoso-client-secret"
    secret.write_text(SECRET + "\n")
    config = load_config(write_yaml(SPEC_EXAMPLE.format(secret_file=secret)), {})

    assert config.database_url == "postgresql+psycopg://mailsyncd@db/mailsyncd"
    assert (config.http.host, config.http.port) == ("0.0.0.0", 9464)  # noqa: S104 - binds nothing
    assert config.tls.ca_file is None
    assert (config.logging.level, config.logging.format) == ("info", "auto")
    tenant = config.tenant("contoso")
    assert tenant.credential.kind == "client_secret"
    assert tenant.authority == (
        "https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000"
    )
    assert (tenant.imap.host, tenant.imap.port) == ("outlook.office365.com", 993)
    assert config.mailbox_settings() == (
        MailboxSettings(
            address="support@contoso.com",
            tenant="contoso",
            folders=("INBOX", "Sent Items"),
            poll_interval=30.0,
            full_scan_interval=900.0,
            backfill_days=None,
        ),
    )


def test_omitted_sections_take_the_spec_defaults(secrets_dir: Path) -> None:
    config = config_from_mapping(valid_document(secrets_dir), environ={})

    assert config.http.listen == "0.0.0.0:9464"
    assert (config.logging.level, config.logging.format) == ("info", "auto")
    assert (config.defaults.poll_interval, config.defaults.full_scan_interval) == (60.0, 900.0)
    assert (config.defaults.folders, config.defaults.backfill_days) == (("INBOX",), None)
    limits = config.limits
    assert (limits.max_concurrent_polls, limits.max_concurrent_polls_per_tenant) == (32, 16)
    assert limits.fetch_batch_size == 500
    assert (limits.max_open_sessions, limits.imap_timeout) == (10000, 60.0)
    tenant = config.tenants[0]
    assert tenant.authority_host == "https://login.microsoftonline.com"
    assert tenant.scope == "https://outlook.office365.com/.default"
    assert config.tenants[1].credential.certificate is not None
    assert config.tenants[1].credential.certificate.send_certificate_chain is False


@pytest.mark.parametrize(("written", "seconds"), [(90, 90.0), ("45s", 45.0), ("2m", 120.0)])
def test_imap_timeout_is_a_duration_and_open_sessions_a_count(
    secrets_dir: Path, written: object, seconds: float
) -> None:
    doc = valid_document(secrets_dir)
    doc["limits"] = {"imap_timeout": written, "max_open_sessions": 250}

    limits = config_from_mapping(doc, environ={}).limits

    assert (limits.imap_timeout, limits.max_open_sessions) == (seconds, 250)


def test_example_file_loads_once_its_secret_paths_exist(
    tmp_path: Path, write_yaml: Callable[..., Path]
) -> None:
    text = (REPO / "config" / "example.yaml").read_text(encoding="utf-8")
    for name in ("contoso-client-secret", "fabrikam-key.pem", "fabrikam-cert.pem"):
        (tmp_path / name).write_text("x\n")
    config = load_config(write_yaml(text.replace("/run/secrets/", f"{tmp_path}/")), {})

    assert [t.credential.kind for t in config.tenants] == ["client_secret", "certificate"]
    assert config.mailbox_settings()[0].backfill_days == 90


def test_mailboxes_inherit_defaults_and_their_folders_replace_the_default_list(
    secrets_dir: Path,
) -> None:
    doc = valid_document(secrets_dir)
    doc["defaults"] = {
        "poll_interval": "2m",
        "full_scan_interval": "1h",
        "folders": ["INBOX", "Archive"],
        "backfill_days": 30,
    }
    doc["mailboxes"][1].update(folders=["Sent Items"], poll_interval=15, backfill_days=None)
    doc["mailboxes"][2].update(full_scan_interval="30m", backfill_days=7)

    settings = {s.address: s for s in config_from_mapping(doc, environ={}).mailbox_settings()}

    assert settings["support@contoso.com"] == MailboxSettings(
        "support@contoso.com", "contoso", ("INBOX", "Archive"), 120.0, 3600.0, 30
    )
    # an explicit null backfill means "the whole folder", not "inherit"
    assert settings["sales@contoso.com"] == MailboxSettings(
        "sales@contoso.com", "contoso", ("Sent Items",), 15.0, 3600.0, None
    )
    assert settings["info@fabrikam.com"] == MailboxSettings(
        "info@fabrikam.com", "fabrikam", ("INBOX", "Archive"), 120.0, 1800.0, 7
    )


def test_addresses_are_stored_lower_cased(secrets_dir: Path) -> None:
    doc = valid_document(secrets_dir)
    doc["mailboxes"][0]["address"] = "  Support@Contoso.COM "

    config = config_from_mapping(doc, environ={})

    assert config.mailboxes[0].address == "support@contoso.com"


def test_config_file_is_found_through_mailsyncd_config(
    secrets_dir: Path, write_yaml: Callable[..., Path]
) -> None:
    path = write_yaml(valid_document(secrets_dir))

    config = load_config(None, {"MAILSYNCD_CONFIG": str(path)})

    assert len(config.mailboxes) == 4


def test_database_url_is_read_from_the_variable_named_by_url_env(secrets_dir: Path) -> None:
    doc = valid_document(secrets_dir)
    doc["database"] = {"url_env": "DATABASE_URL"}
    url = "postgresql+psycopg://mailsyncd:db-password@db/mailsyncd"

    config = config_from_mapping(doc, environ={"DATABASE_URL": url + "\n"})

    assert config.database_url == url
    assert "db-password" not in repr(config)


def test_relative_paths_are_relative_to_the_config_file(
    secrets_dir: Path, write_yaml: Callable[..., Path]
) -> None:
    doc = valid_document(secrets_dir)
    doc["tenants"][0]["credential"] = {"client_secret_file": "secrets/client-secret"}

    config = load_config(write_yaml(doc), {})

    assert config.tenants[0].credential.client_secret_file == secrets_dir / "client-secret"


def test_config_is_immutable(secrets_dir: Path) -> None:
    config = config_from_mapping(valid_document(secrets_dir), environ={})

    with pytest.raises(ValueError, match="frozen"):
        config.limits.fetch_batch_size = 1  # type: ignore[misc]


# -- durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (30, 30.0),
        (1.5, 1.5),
        ("30", 30.0),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1d", 86400.0),
        (" 2M ", 120.0),
        ("1.5m", 90.0),
    ],
)
def test_duration_is_accepted(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value",
    [
        "0s",
        "abc",
        "-5",
        "5 parsecs",
        "",
        "0.5s",
        "30m1h",
        "1h1h",
        "5 m",
        0,
        -5,
        0.5,
        True,
        None,
        math.inf,
        math.nan,
        [30],
    ],
)
def test_duration_is_rejected(value: object) -> None:
    with pytest.raises(ValueError, match=r"duration|at least 1s"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("defaults.poll_interval", "0s"),
        ("defaults.full_scan_interval", "abc"),
        ("defaults.poll_interval", "-5"),
        ("mailboxes.3.poll_interval", "5 parsecs"),
        ("mailboxes.0.full_scan_interval", 0),
    ],
)
def test_bad_duration_is_reported_at_its_key_path(
    broken: Callable[..., ConfigError], key: str, value: object
) -> None:
    parent = key.rsplit(".", 1)[0]
    mutations = [put(key, value)]
    if parent == "defaults":
        mutations.insert(0, put("defaults", {}))

    err = broken(*mutations)

    expected = key.replace(".3.", "[3].").replace(".0.", "[0].")
    assert paths(err) == [expected]


# -- broken configurations ---------------------------------------------------------------------

BROKEN = [
    pytest.param([put("mailbox", [])], ["mailbox"], id="unknown-top-level-key"),
    pytest.param([drop("database")], ["database"], id="missing-database"),
    pytest.param([put("database.url_env", "DATABASE_URL")], ["database"], id="url-and-url-env"),
    pytest.param([put("database", {})], ["database"], id="neither-url-nor-url-env"),
    pytest.param([put("database", {"url_env": "NOPE"})], ["database.url_env"], id="url-env-unset"),
    pytest.param([put("database.url", "not a url")], ["database.url"], id="bad-database-url"),
    pytest.param([put("http", {"listen": "9464"})], ["http.listen"], id="listen-without-host"),
    pytest.param([put("tls", {"ca_file": "/nonexistent/ca.pem"})], ["tls.ca_file"], id="ca"),
    pytest.param([put("logging", {"level": "verbose"})], ["logging.level"], id="log-level"),
    pytest.param([put("logging", {"format": "xml"})], ["logging.format"], id="log-format"),
    pytest.param(
        [put("limits", {"max_concurrent_polls": 0})],
        ["limits.max_concurrent_polls"],
        id="zero-concurrency",
    ),
    pytest.param(
        [put("limits", {"max_open_sessions": 0})],
        ["limits.max_open_sessions"],
        id="zero-open-sessions",
    ),
    pytest.param(
        [put("limits", {"imap_timeout": 0})], ["limits.imap_timeout"], id="zero-imap-timeout"
    ),
    pytest.param(
        [put("limits", {"imap_timeout": "-5s"})],
        ["limits.imap_timeout"],
        id="negative-imap-timeout",
    ),
    pytest.param([put("defaults", {"folders": []})], ["defaults.folders"], id="no-folders"),
    pytest.param(
        [put("defaults", {"backfill_days": "30"})],
        ["defaults.backfill_days"],
        id="backfill-days-as-string",
    ),
    pytest.param(
        [put("tenants.2.name", "North Wind"), put("mailboxes.3.tenant", "North Wind")],
        ["tenants[2].name"],
        id="tenant-label",
    ),
    pytest.param(
        [put("tenants.1.name", "contoso"), put("mailboxes.2.tenant", "contoso")],
        ["tenants[1].name"],
        id="duplicate-tenant",
    ),
    pytest.param(
        [put("tenants.0.tenant_id", "common")], ["tenants[0].tenant_id"], id="tenant-id-common"
    ),
    pytest.param([drop("tenants.2.client_id")], ["tenants[2].client_id"], id="missing-client-id"),
    pytest.param(
        [put("tenants.0.authority_host", "http://login.example")],
        ["tenants[0].authority_host"],
        id="authority-not-https",
    ),
    pytest.param([put("tenants.0.imap", {"port": 0})], ["tenants[0].imap.port"], id="imap-port"),
    pytest.param([put("tenants.0.credential", {})], ["tenants[0].credential"], id="no-credential"),
    pytest.param(
        [put("tenants.0.credential.federated_token_file", "secrets/token")],
        ["tenants[0].credential"],
        id="two-credentials",
    ),
    pytest.param(
        [put("tenants.0.credential.client_secret_file", "/nonexistent/secret")],
        ["tenants[0].credential.client_secret_file"],
        id="missing-secret-file",
    ),
    pytest.param(
        [put("tenants.0.credential", {"client_secret_env": "CONTOSO_SECRET"})],
        ["tenants[0].credential.client_secret_env"],
        id="secret-env-unset",
    ),
    pytest.param(
        [put("tenants.1.credential.certificate.private_key_file", "/nonexistent/k")],
        ["tenants[1].credential.certificate.private_key_file"],
        id="missing-key-file",
    ),
    pytest.param(
        [put("tenants.1.credential.certificate.certificate_file", "/nonexistent/c")],
        ["tenants[1].credential.certificate.certificate_file"],
        id="missing-cert-file",
    ),
    pytest.param(
        [put("tenants.2.credential.federated_token_file", "/nonexistent/t")],
        ["tenants[2].credential.federated_token_file"],
        id="missing-token-file",
    ),
    pytest.param(
        [put("tenants.0.credential", {"client_secret": SECRET})],
        ["tenants[0].credential.client_secret"],
        id="inline-client-secret",
    ),
    pytest.param(
        [put("tenants.0.client_secret", SECRET)],
        ["tenants[0].client_secret"],
        id="inline-secret-beside-client-id",
    ),
    pytest.param(
        [put("tenants.1.credential.certificate.password", SECRET)],
        ["tenants[1].credential.certificate.password"],
        id="inline-key-password",
    ),
    pytest.param(
        [put("mailboxes.3.tenant", "tailspin")], ["mailboxes[3].tenant"], id="unknown-tenant"
    ),
    pytest.param(
        [put("mailboxes.3.address", "SUPPORT@contoso.com")],
        ["mailboxes[3].address"],
        id="duplicate-address-differing-in-case",
    ),
    pytest.param(
        [put("mailboxes.0.address", "support.contoso.com")],
        ["mailboxes[0].address"],
        id="address-without-at",
    ),
    pytest.param(
        [put("mailboxes.1.pol_interval", "30s")],
        ["mailboxes[1].pol_interval"],
        id="misspelt-mailbox-key",
    ),
    pytest.param(
        [put("mailboxes.1.folders", ["INBOX", "INBOX"])],
        ["mailboxes[1].folders"],
        id="folder-twice",
    ),
    pytest.param([drop("mailboxes.2.tenant")], ["mailboxes[2].tenant"], id="mailbox-no-tenant"),
]


@pytest.mark.parametrize(("mutations", "expected"), BROKEN)
def test_broken_config_is_reported_at_its_key_path(
    broken: Callable[..., ConfigError], mutations: list[Mutation], expected: list[str]
) -> None:
    assert paths(broken(*mutations)) == expected


def test_every_problem_is_reported_at_once_in_file_order(
    broken: Callable[..., ConfigError],
) -> None:
    err = broken(
        put("mailboxes.3.tenant", "tailspin"),
        put("mailboxes.2.address", "Support@Contoso.com"),
        put("mailboxes.0.poll_interval", "0s"),
        put("tenants.0.credential", {"client_secret": SECRET}),
        put("tenants.2.credential.federated_token_file", "/nonexistent/token"),
        put("defaults", {"full_scan_interval": "abc"}),
        put("logging", {"level": "loud"}),
        put("database", {"url_env": "UNSET"}),
        put("extra", 1),
    )

    assert paths(err) == [
        "database.url_env",
        "logging.level",
        "defaults.full_scan_interval",
        "tenants[0].credential.client_secret",
        "tenants[2].credential.federated_token_file",
        "mailboxes[0].poll_interval",
        "mailboxes[2].address",
        "mailboxes[3].tenant",
        "extra",
    ]
    assert format_errors(err).splitlines() == [f"{i.path}: {i.message}" for i in err.errors]


def test_duplicate_address_names_the_second_occurrence_and_the_first(
    broken: Callable[..., ConfigError],
) -> None:
    err = broken(put("mailboxes.3.address", "Sales@Contoso.com"))

    assert err.errors == [
        ConfigIssue("mailboxes[3].address", "duplicate of mailboxes[1].address (sales@contoso.com)")
    ]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("tenants.0.credential.client_secret", SECRET),
        ("tenants.0.client_secret", SECRET),
        ("tenants.0.credential.secret", SECRET),
        ("tenants.0.credential.password", SECRET),
        ("tenants.1.credential.private_key", SECRET),
    ],
)
def test_inline_secret_message_names_file_and_env_alternatives(
    broken: Callable[..., ConfigError], key: str, value: str
) -> None:
    err = broken(put(key, value))

    message = err.errors[-1].message
    assert "client_secret_file" in message
    assert "client_secret_env" in message


# -- files and YAML ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("database: [\n", "line 2"),
        ("database:\n  url: a\n  url: b\n", "line 3, column 3: duplicate key 'url'"),
        ("- database\n", "top level must be a mapping"),
        ("", "the file is empty"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_unusable_file_is_one_file_level_error(
    tmp_path: Path, text: str | bytes, message: str
) -> None:
    path = tmp_path / "mailsyncd.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)

    with pytest.raises(ConfigError) as info:
        load_config(path, {})

    [issue] = info.value.errors
    assert issue.path == "(file)"
    assert message in issue.message


@pytest.mark.parametrize(
    ("name", "environ", "message"),
    [
        ("missing.yaml", {}, "does not exist"),
        (".", {}, "is a directory"),
        (None, {}, "MAILSYNCD_CONFIG"),
        (None, {"MAILSYNCD_CONFIG": ""}, "MAILSYNCD_CONFIG"),
    ],
)
def test_missing_file_is_a_file_level_error(
    tmp_path: Path, name: str | None, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None if name is None else tmp_path / name, environ)

    assert [(i.path, message in i.message) for i in info.value.errors] == [("(file)", True)]


# -- secrets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [SECRET, SECRET + "\n", SECRET + "\r\n", f"  {SECRET} \n"])
def test_client_secret_file_is_read_without_trailing_newline(
    secrets_dir: Path, content: str
) -> None:
    (secrets_dir / "client-secret").write_text(content)
    config = config_from_mapping(valid_document(secrets_dir), environ={})

    assert config.tenants[0].credential.read_client_secret().get_secret_value() == SECRET


def test_client_secret_env_is_read_at_load_time(secrets_dir: Path) -> None:
    doc = valid_document(secrets_dir)
    doc["tenants"][0]["credential"] = {"client_secret_env": "CONTOSO_SECRET"}

    config = config_from_mapping(doc, environ={"CONTOSO_SECRET": SECRET + "\n"})

    assert config.tenants[0].credential.read_client_secret().get_secret_value() == SECRET


def test_certificate_and_federated_token_files_are_readable(secrets_dir: Path) -> None:
    config = config_from_mapping(valid_document(secrets_dir), environ={})
    certificate = config.tenants[1].credential.certificate

    assert certificate is not None
    assert (
        certificate.read_private_key().get_secret_value().startswith("-----BEGIN PRIVATE" + " KEY")
    )
    assert certificate.read_certificate().endswith("-----END CERTIFICATE-----")
    token = config.tenants[2].credential.read_federated_token()
    assert token.get_secret_value() == "federated.jwt.token"


def test_unchecked_secrets_load_and_fail_only_when_read(secrets_dir: Path) -> None:
    doc = valid_document(secrets_dir)
    doc["tenants"][0]["credential"] = {"client_secret_file": "/nonexistent/secret"}
    doc["tenants"][2]["credential"] = {"client_secret_env": "UNSET"}

    config = config_from_mapping(doc, environ={}, check_secrets=False)

    with pytest.raises(SecretReadError, match="client_secret_file: cannot read"):
        config.tenants[0].credential.read_client_secret()
    with pytest.raises(SecretReadError, match="client_secret_env"):
        config.tenants[2].credential.read_client_secret()


def test_secret_file_emptied_after_loading_fails_when_read(secrets_dir: Path) -> None:
    config = config_from_mapping(valid_document(secrets_dir), environ={})
    (secrets_dir / "client-secret").write_text("\n")

    with pytest.raises(SecretReadError, match="empty"):
        config.tenants[0].credential.read_client_secret()


def _everything_printed(obj: object) -> str:
    if isinstance(obj, BaseException):
        return "".join(traceback.format_exception(obj)) + repr(obj) + str(obj)
    return repr(obj) + str(obj)


def test_secret_values_never_appear_in_config_reprs(secrets_dir: Path) -> None:
    doc = valid_document(secrets_dir)
    doc["tenants"][2]["credential"] = {"client_secret_env": "NORTHWIND_SECRET"}
    doc["database"] = {"url": "postgresql+psycopg://u:db-password@db/x"}
    config = config_from_mapping(doc, environ={"NORTHWIND_SECRET": SECRET})
    credentials = [tenant.credential for tenant in config.tenants]
    secrets = [credentials[0].read_client_secret(), credentials[2].read_client_secret()]

    for shown in [config, config.database, *credentials, *secrets]:
        assert SECRET not in _everything_printed(shown)
        assert "db-password" not in _everything_printed(shown)


@pytest.mark.parametrize(
    "mutation",
    [
        put("tenants.0.credential", {"client_secret": SECRET}),
        put("tenants.0.client_secret", SECRET),
        put("tenants.1.credential.certificate.private_key", SECRET),
        # the secret pasted where a file name or a variable name belongs
        put("tenants.0.credential.client_secret_file", SECRET),
        put("tenants.0.credential", {"client_secret_env": SECRET}),
        put("database.url", f"postgresql://u:{SECRET}@db x"),
    ],
    ids=[
        "inline-in-credential",
        "inline-beside-client-id",
        "inline-private-key",
        "pasted-as-file-name",
        "pasted-as-variable-name",
        "in-a-bad-database-url",
    ],
)
def test_secret_values_never_appear_in_errors(
    broken: Callable[..., ConfigError], mutation: Mutation
) -> None:
    err = broken(mutation)

    assert err.errors
    assert SECRET not in _everything_printed(err)
    assert SECRET not in format_errors(err)
    assert err.__context__ is None
    assert err.__cause__ is None


def test_secret_in_a_yaml_syntax_error_is_not_quoted(tmp_path: Path) -> None:
    path = tmp_path / "mailsyncd.yaml"
    path.write_text(f"database:\n  url: [{SECRET}\nmailboxes: []\n")

    with pytest.raises(ConfigError) as info:
        load_config(path, {})

    assert SECRET not in _everything_printed(info.value)


def test_config_model_validates_without_a_load_context(secrets_dir: Path) -> None:
    # other code (tests, tools) may build a Config directly; it must validate the same way
    config = Config.model_validate(valid_document(secrets_dir))

    assert config.tenant("fabrikam").credential.kind == "certificate"
    with pytest.raises(KeyError):
        config.tenant("tailspin")
