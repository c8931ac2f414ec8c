"""``daemon.config.diff``: what a reload must do, from two configurations."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.config import (
    RESTART_KEYS,
    Config,
    ConfigDiff,
    MailboxSettings,
    config_from_mapping,
    diff,
)
from localenv import pki

SECRET = "s3cr3t~Value.0123456789abcdefghijklmnop"
ENVIRON = {"NORTHWIND_SECRET": SECRET, "DATABASE_URL": "sqlite:///from-env.db"}

Mutation = Callable[[dict[str, Any]], None]


def base_document() -> dict[str, Any]:
    return {
        "database": {"url": "sqlite:///mailsyncd.db"},
        "tenants": [
            {
                "name": "contoso",
                "tenant_id": "00000000-0000-0000-0000-000000000000",
                "client_id": "00000000-0000-0000-0000-000000000001",
                "credential": {"client_secret_file": "secrets/contoso"},
            },
            {
                "name": "fabrikam",
                "tenant_id": "fabrikam.onmicrosoft.com",
                "client_id": "00000000-0000-0000-0000-000000000002",
                "credential": {
                    "certificate": {
                        "private_key_file": "secrets/key.pem",
                        "certificate_file": "secrets/cert.pem",
                    }
                },
            },
            {
                "name": "northwind",
                "tenant_id": "northwind.example",
                "client_id": "00000000-0000-0000-0000-000000000003",
                "credential": {"client_secret_env": "NORTHWIND_SECRET"},
            },
        ],
        "mailboxes": [
            {"address": "a@contoso.com", "tenant": "contoso", "folders": ["INBOX", "Sent"]},
            {"address": "b@contoso.com", "tenant": "contoso"},
            {"address": "c@fabrikam.com", "tenant": "fabrikam", "poll_interval": "30s"},
            {"address": "d@northwind.example", "tenant": "northwind"},
        ],
    }


@pytest.fixture
def base_dir(tmp_path: Path) -> Path:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name in ("contoso", "contoso-2", "key.pem", "cert.pem"):
        (secrets / name).write_text("x\n")
    # tls.ca_file is loaded while validating: it must hold a real CA certificate
    ca = pki.CertificateAuthority.create("config diff test CA")
    (secrets / "ca.pem").write_bytes(pki.cert_pem(ca.cert))
    return tmp_path


def build(document: dict[str, Any], base_dir: Path, environ: dict[str, str] = ENVIRON) -> Config:
    return config_from_mapping(copy.deepcopy(document), environ=environ, base_dir=base_dir)


def put(path: str, value: Any) -> Mutation:
    """Set the value at a dotted path (list indexes as numbers)."""

    def mutate(doc: dict[str, Any]) -> None:
        node: Any = doc
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        for step in parents:
            node = node[step]
        node[last] = value

    return mutate


def summary(found: ConfigDiff) -> dict[str, Any]:
    """The diff in short: addresses and names, each change with what changed; empty parts out."""
    parts: dict[str, Any] = {
        "mailboxes_added": [m.address for m in found.mailboxes_added],
        "mailboxes_removed": [m.address for m in found.mailboxes_removed],
        "mailboxes_changed": {c.address: c.settings for c in found.mailboxes_changed},
        "tenants_added": list(found.tenants_added),
        "tenants_removed": list(found.tenants_removed),
        "tenants_changed": {
            t.name: (t.keys, t.needs_new_token, t.imap_changed) for t in found.tenants_changed
        },
        "changed_keys": found.changed_keys,
        "needs_restart": found.needs_restart,
    }
    return {key: value for key, value in parts.items() if value}


def remove_mailbox(index: int) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        del doc["mailboxes"][index]

    return mutate


def add_mailbox(**entry: Any) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        doc["mailboxes"].append(entry)

    return mutate


def add_tenant(name: str) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        doc["tenants"].append(
            {
                "name": name,
                "tenant_id": f"{name}.example",
                "client_id": "00000000-0000-0000-0000-000000000004",
                "credential": {"client_secret_file": "secrets/contoso"},
            }
        )

    return mutate


def reverse_mailboxes(doc: dict[str, Any]) -> None:
    doc["mailboxes"].reverse()


def remove_tenant_northwind(doc: dict[str, Any]) -> None:
    del doc["tenants"][2]
    del doc["mailboxes"][3]


CASES = [
    pytest.param([], {}, id="identical"),
    pytest.param([reverse_mailboxes], {}, id="mailboxes-reordered"),
    pytest.param([put("mailboxes.1.address", "B@Contoso.COM")], {}, id="address-case"),
    pytest.param([put("mailboxes.1.poll_interval", "1m")], {}, id="default-written-out"),
    pytest.param([put("mailboxes.0.folders", ["INBOX", "Sent"])], {}, id="same-folders"),
    pytest.param([put("limits", {"fetch_batch_size": 500})], {}, id="limit-default-written"),
    pytest.param([put("http", None)], {}, id="empty-section"),
    # mailboxes
    pytest.param(
        [add_mailbox(address="e@contoso.com", tenant="contoso")],
        {"mailboxes_added": ["e@contoso.com"]},
        id="mailbox-added",
    ),
    pytest.param([remove_mailbox(1)], {"mailboxes_removed": ["b@contoso.com"]}, id="removed"),
    pytest.param(
        [put("mailboxes.0.folders", ["INBOX"])],
        {"mailboxes_changed": {"a@contoso.com": ("folders",)}},
        id="folders",
    ),
    pytest.param(
        [put("mailboxes.0.folders", None)],
        {"mailboxes_changed": {"a@contoso.com": ("folders",)}},
        id="folders-back-to-default",
    ),
    pytest.param(
        [put("mailboxes.2.poll_interval", "45s"), put("mailboxes.2.backfill_days", None)],
        {"mailboxes_changed": {"c@fabrikam.com": ("poll_interval",)}},
        id="interval-and-explicit-null-backfill",
    ),
    pytest.param(
        [put("mailboxes.1.backfill_days", 7), put("mailboxes.1.enabled", False)],
        {"mailboxes_changed": {"b@contoso.com": ("backfill_days", "enabled")}},
        id="backfill-and-disabled",
    ),
    pytest.param(
        [put("mailboxes.1.tenant", "fabrikam")],
        {"mailboxes_changed": {"b@contoso.com": ("tenant",)}},
        id="mailbox-moves-tenant",
    ),
    pytest.param(
        [put("mailboxes.1.address", "x@contoso.com")],
        {"mailboxes_added": ["x@contoso.com"], "mailboxes_removed": ["b@contoso.com"]},
        id="address-renamed",
    ),
    # defaults reach the mailboxes that inherit them
    pytest.param(
        [put("defaults", {"poll_interval": "2m"})],
        {
            "mailboxes_changed": {
                "a@contoso.com": ("poll_interval",),
                "b@contoso.com": ("poll_interval",),
                "d@northwind.example": ("poll_interval",),
            },
            "changed_keys": ("defaults.poll_interval",),
        },
        id="default-interval",
    ),
    pytest.param(
        [put("defaults", {"folders": ["INBOX", "Archive"], "full_scan_interval": "15m"})],
        {
            "mailboxes_changed": {
                "b@contoso.com": ("folders",),
                "c@fabrikam.com": ("folders",),
                "d@northwind.example": ("folders",),
            },
            "changed_keys": ("defaults.folders",),
        },
        id="default-folders",
    ),
    # tenants
    pytest.param(
        [add_tenant("tailspin")],
        {"tenants_added": ["tailspin"]},
        id="tenant-added",
    ),
    pytest.param(
        [remove_tenant_northwind],
        {"tenants_removed": ["northwind"], "mailboxes_removed": ["d@northwind.example"]},
        id="tenant-removed-with-its-mailbox",
    ),
    pytest.param(
        [put("tenants.0.credential.client_secret_file", "secrets/contoso-2")],
        {"tenants_changed": {"contoso": (("credential.client_secret_file",), True, False)}},
        id="secret-file",
    ),
    pytest.param(
        [put("tenants.0.credential", {"client_secret_env": "NORTHWIND_SECRET"})],
        {
            "tenants_changed": {
                "contoso": (
                    ("credential.client_secret_file", "credential.client_secret_env"),
                    True,
                    False,
                )
            }
        },
        id="secret-kind",
    ),
    pytest.param(
        [put("tenants.1.credential.certificate.send_certificate_chain", True)],
        {
            "tenants_changed": {
                "fabrikam": (("credential.certificate.send_certificate_chain",), True, False)
            }
        },
        id="certificate-chain",
    ),
    pytest.param(
        [put("tenants.1.credential", {"client_secret_file": "secrets/contoso"})],
        {
            "tenants_changed": {
                "fabrikam": (
                    ("credential.client_secret_file", "credential.certificate"),
                    True,
                    False,
                )
            }
        },
        id="certificate-to-secret",
    ),
    pytest.param(
        [put("tenants.0.client_id", "00000000-0000-0000-0000-000000000009")],
        {"tenants_changed": {"contoso": (("client_id",), True, False)}},
        id="client-id",
    ),
    pytest.param(
        [put("tenants.0.tenant_id", "contoso.onmicrosoft.com")],
        {"tenants_changed": {"contoso": (("tenant_id",), True, False)}},
        id="tenant-id",
    ),
    pytest.param(
        [put("tenants.0.authority_host", "https://login.microsoftonline.us")],
        {"tenants_changed": {"contoso": (("authority_host",), True, False)}},
        id="authority",
    ),
    pytest.param(
        [put("tenants.0.scope", "https://outlook.office365.us/.default")],
        {"tenants_changed": {"contoso": (("scope",), True, False)}},
        id="scope",
    ),
    pytest.param(
        [put("tenants.0.imap", {"host": "imap.example", "port": 993})],
        {"tenants_changed": {"contoso": (("imap.host",), False, True)}},
        id="imap-host",
    ),
    pytest.param(
        [put("tenants.2.imap", {"port": 1993}), put("tenants.2.client_id", "x")],
        {"tenants_changed": {"northwind": (("client_id", "imap.port"), True, True)}},
        id="imap-port-and-client",
    ),
    pytest.param(
        [put("tenants.0.authority_host", "https://login.microsoftonline.com/")],
        {},
        id="authority-written-differently",
    ),
    # other keys
    pytest.param(
        [put("database.url", "sqlite:///other.db")],
        {"changed_keys": ("database.url",), "needs_restart": ("database.url",)},
        id="database-url",
    ),
    pytest.param(
        [put("database", {"url_env": "DATABASE_URL"})],
        {
            "changed_keys": ("database.url", "database.url_env"),
            "needs_restart": ("database.url", "database.url_env"),
        },
        id="database-url-env",
    ),
    pytest.param(
        [put("http", {"listen": "127.0.0.1:9464"})],
        {"changed_keys": ("http.listen",), "needs_restart": ("http.listen",)},
        id="http-listen",
    ),
    pytest.param(
        [put("limits", {"max_concurrent_polls": 8})],
        {
            "changed_keys": ("limits.max_concurrent_polls",),
            "needs_restart": ("limits.max_concurrent_polls",),
        },
        id="max-concurrent-polls",
    ),
    pytest.param(
        [
            put(
                "limits",
                {
                    "max_concurrent_polls_per_tenant": 4,
                    "fetch_batch_size": 100,
                    "max_open_sessions": 50,
                    "imap_timeout": "2m",
                },
            )
        ],
        {
            "changed_keys": (
                "limits.max_concurrent_polls_per_tenant",
                "limits.fetch_batch_size",
                "limits.max_open_sessions",
                "limits.imap_timeout",
            )
        },
        id="reloadable-limits",
    ),
    pytest.param(
        [put("logging", {"level": "debug"})],
        {"changed_keys": ("logging.level",)},
        id="log-level",
    ),
    pytest.param(
        [put("logging", {"format": "json"})],
        {"changed_keys": ("logging.format",), "needs_restart": ("logging.format",)},
        id="log-format",
    ),
    pytest.param(
        [put("tls", {"ca_file": "secrets/ca.pem"})],
        {"changed_keys": ("tls.ca_file",), "needs_restart": ("tls.ca_file",)},
        id="ca-file",
    ),
    pytest.param(
        [
            put("http", {"listen": "[::]:9464"}),
            put("logging", {"level": "warning"}),
            put("defaults", {"backfill_days": 30}),
            put("mailboxes.0.backfill_days", None),
            remove_mailbox(3),
            put("tenants.1.imap", {"port": 10993}),
        ],
        {
            "mailboxes_removed": ["d@northwind.example"],
            "mailboxes_changed": {
                "b@contoso.com": ("backfill_days",),
                "c@fabrikam.com": ("backfill_days",),
            },
            "tenants_changed": {"fabrikam": (("imap.port",), False, True)},
            "changed_keys": ("http.listen", "logging.level", "defaults.backfill_days"),
            "needs_restart": ("http.listen",),
        },
        id="several-at-once",
    ),
]


@pytest.mark.parametrize(("mutations", "expected"), CASES)
def test_diff(base_dir: Path, mutations: list[Mutation], expected: dict[str, Any]) -> None:
    new_document = base_document()
    for mutate in mutations:
        mutate(new_document)

    found = diff(build(base_document(), base_dir), build(new_document, base_dir))

    assert summary(found) == expected
    assert found.empty == (not expected)


def test_changed_mailboxes_carry_both_settings(base_dir: Path) -> None:
    new_document = base_document()
    new_document["mailboxes"][2]["folders"] = ["Archive"]

    [change] = diff(
        build(base_document(), base_dir), build(new_document, base_dir)
    ).mailboxes_changed

    assert change.old == MailboxSettings(
        "c@fabrikam.com", "fabrikam", ("INBOX",), 30.0, 900.0, None
    )
    assert change.new == MailboxSettings(
        "c@fabrikam.com", "fabrikam", ("Archive",), 30.0, 900.0, None
    )
    assert (change.address, change.settings) == ("c@fabrikam.com", ("folders",))


def test_added_and_removed_mailboxes_keep_their_configuration_order(base_dir: Path) -> None:
    old_document, new_document = base_document(), base_document()
    new_document["mailboxes"] = [
        {"address": f"{name}@contoso.com", "tenant": "contoso"} for name in ("z", "b", "y", "x")
    ]

    found = diff(build(old_document, base_dir), build(new_document, base_dir))

    assert [m.address for m in found.mailboxes_added] == [
        "z@contoso.com",
        "y@contoso.com",
        "x@contoso.com",
    ]
    assert [m.address for m in found.mailboxes_removed] == [
        "a@contoso.com",
        "c@fabrikam.com",
        "d@northwind.example",
    ]


def test_a_value_read_from_a_variable_counts_as_a_change(base_dir: Path) -> None:
    document = base_document()
    document["database"] = {"url_env": "DATABASE_URL"}
    old = build(document, base_dir)
    new = build(
        document,
        base_dir,
        {"NORTHWIND_SECRET": "another-" + SECRET, "DATABASE_URL": "sqlite:///elsewhere.db"},
    )

    found = diff(old, new)

    assert summary(found) == {
        "tenants_changed": {"northwind": (("credential",), True, False)},
        "changed_keys": ("database",),
        "needs_restart": ("database",),
    }
    assert SECRET not in repr(found)
    assert "elsewhere" not in repr(found)


def test_moving_mailboxes_into_a_file_changes_nothing(base_dir: Path) -> None:
    old_document, new_document = base_document(), base_document()
    moved = new_document["mailboxes"][2:]
    del new_document["mailboxes"][2:]
    (base_dir / "teams.yaml").write_text(yaml.safe_dump(moved))
    new_document["mailboxes_files"] = ["teams.yaml"]

    found = diff(build(old_document, base_dir), build(new_document, base_dir))

    assert found.empty
    assert found == ConfigDiff()


def test_restart_keys_exist_in_the_model() -> None:
    for key in RESTART_KEYS:
        model: Any = Config
        for name in key.split("."):
            assert name in model.model_fields, key
            model = model.model_fields[name].annotation
