"""``mailboxes_files``: mailbox lists in their own files, their errors, and the files watched."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon import commands
from daemon.config import (
    Config,
    ConfigError,
    ConfigIssue,
    MailboxSettings,
    config_from_mapping,
    load_config,
)
from daemon.config.loader import _parse_yaml

Write = Callable[..., Path]


def entry(address: str, tenant: str = "contoso", **settings: Any) -> dict[str, Any]:
    return {"address": address, "tenant": tenant, **settings}


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "etc"
    directory.mkdir()
    (directory / "client-secret").write_text("s3cr3t\n")
    return directory


@pytest.fixture
def write(config_dir: Path) -> Write:
    """Write a document (dumped as YAML) or text to a file under the configuration directory."""

    def write_file(name: str, document: object) -> Path:
        path = config_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(document, bytes):
            path.write_bytes(document)
        else:
            text = document if isinstance(document, str) else yaml.safe_dump(document)
            path.write_text(text, encoding="utf-8")
        return path

    return write_file


def main_document(
    patterns: list[Any], mailboxes: list[Any] | None = None, **more: Any
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "database": {"url": "sqlite://"},
        "tenants": [
            {
                "name": name,
                "tenant_id": f"{name}.onmicrosoft.com",
                "client_id": "00000000-0000-0000-0000-000000000001",
                "credential": {"client_secret_file": "client-secret"},
            }
            for name in ("contoso", "fabrikam")
        ],
        "mailboxes_files": patterns,
        **more,
    }
    if mailboxes is not None:
        document["mailboxes"] = mailboxes
    return document


@pytest.fixture
def load(write: Write) -> Callable[..., Config]:
    """Write the main file (mailsyncd.yaml) from its patterns and inline mailboxes; load it."""

    def load_main(patterns: list[Any], mailboxes: list[Any] | None = None, **more: Any) -> Config:
        return load_config(write("mailsyncd.yaml", main_document(patterns, mailboxes, **more)), {})

    return load_main


@pytest.fixture
def errors(load: Callable[..., Config]) -> Callable[..., list[tuple[str, str]]]:
    """Load a main file that must be rejected; return its (key path, message) pairs."""

    def rejected(patterns: list[Any], mailboxes: list[Any] | None = None) -> list[tuple[str, str]]:
        with pytest.raises(ConfigError) as info:
            load(patterns, mailboxes)
        return [(issue.path, issue.message) for issue in info.value.errors]

    return rejected


# -- the effective list ------------------------------------------------------------------------


def test_entries_follow_the_inline_ones_files_sorted_per_pattern_patterns_in_order(
    load: Callable[..., Config], write: Write
) -> None:
    write("teams/b.yaml", [entry("b1@contoso.com"), entry("b2@contoso.com")])
    write("teams/a.yaml", [entry("A1@Contoso.com", "fabrikam", poll_interval="30s")])
    write("vip.yaml", [entry("vip@contoso.com", folders=["INBOX", "Sent Items"])])

    config = load(["vip.yaml", "teams/*.yaml"], [entry("inline@contoso.com")])

    assert [m.address for m in config.mailboxes] == [
        "inline@contoso.com",
        "vip@contoso.com",
        "a1@contoso.com",
        "b1@contoso.com",
        "b2@contoso.com",
    ]
    assert config.mailbox_settings()[2] == MailboxSettings(
        "a1@contoso.com", "fabrikam", ("INBOX",), 30.0, 900.0, None
    )
    assert config.mailbox_settings()[1].folders == ("INBOX", "Sent Items")
    assert config.mailboxes_files == ("vip.yaml", "teams/*.yaml")
    assert [config.mailbox_key_path(i) for i in range(5)] == [
        "mailboxes[0]",
        "mailboxes_files[0]: vip.yaml[0]",
        "mailboxes_files[1]: teams/a.yaml[0]",
        "mailboxes_files[1]: teams/b.yaml[0]",
        "mailboxes_files[1]: teams/b.yaml[1]",
    ]


def test_mailboxes_may_be_omitted_and_a_file_may_list_none(
    load: Callable[..., Config], write: Write
) -> None:
    write("none.yaml", "[]\n")
    write("one.yaml", [entry("one@contoso.com")])

    config = load(["none.yaml", "one.yaml"])

    assert [m.address for m in config.mailboxes] == ["one@contoso.com"]
    assert config.mailbox_key_path(0) == "mailboxes_files[1]: one.yaml[0]"


def test_absolute_recursive_and_parent_patterns(
    load: Callable[..., Config], write: Write, config_dir: Path, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "s.yaml").write_text(yaml.safe_dump([entry("s@contoso.com")]))
    write("deep/x/y/d.yaml", [entry("d@contoso.com")])

    config = load([str(shared / "*.yaml"), "deep/**/*.yaml"])

    assert [m.address for m in config.mailboxes] == ["s@contoso.com", "d@contoso.com"]
    assert config.mailbox_key_path(0) == f"mailboxes_files[0]: {shared / 's.yaml'}[0]"
    assert config.mailbox_key_path(1) == "mailboxes_files[1]: deep/x/y/d.yaml[0]"
    # a relative pattern may climb out of the configuration's directory
    climbing = load(["../shared/s.yaml"])
    assert climbing.mailbox_key_path(0) == "mailboxes_files[0]: ../shared/s.yaml[0]"


def test_a_glob_skips_hidden_names_and_directories(
    load: Callable[..., Config], write: Write, config_dir: Path
) -> None:
    # the layout of a Kubernetes ConfigMap volume: ..data and the timestamped directory
    write("lists/..2024_01_01/teams.yaml", [entry("t@contoso.com")])
    (config_dir / "lists" / "..data").symlink_to("..2024_01_01")
    (config_dir / "lists" / "teams.yaml").symlink_to("..data/teams.yaml")
    (config_dir / "lists" / "sub.yaml").mkdir()

    config = load(["lists/*"])

    assert [m.address for m in config.mailboxes] == ["t@contoso.com"]
    assert config.sources.files[1] == config_dir / "lists" / "teams.yaml"


def test_config_from_mapping_reads_patterns_relative_to_base_dir(
    write: Write, config_dir: Path
) -> None:
    write("teams.yaml", [entry("t@contoso.com")])

    config = config_from_mapping(main_document(["teams.yaml"]), environ={}, base_dir=config_dir)

    assert [m.address for m in config.mailboxes] == ["t@contoso.com"]
    assert config.sources.config_file is None
    assert config.sources.files == (config_dir / "teams.yaml",)


def test_the_model_alone_refuses_mailboxes_files(config_dir: Path) -> None:
    document = main_document(["teams.yaml"])
    document["tenants"][0]["credential"]["client_secret_file"] = str(config_dir / "client-secret")
    document["tenants"][1]["credential"]["client_secret_file"] = str(config_dir / "client-secret")

    with pytest.raises(ValueError, match="mailboxes_files") as info:
        Config.model_validate(document)

    assert "load_config" in str(info.value)


# -- errors ------------------------------------------------------------------------------------


def test_an_entry_error_names_the_pattern_the_file_and_the_index(
    errors: Callable[..., list[tuple[str, str]]], write: Write
) -> None:
    entries = [entry(f"user{i}@contoso.com") for i in range(13)]
    entries[12]["tenant"] = "tailspin"
    write("teams.yaml", entries)

    [(path, message)] = errors(["teams.yaml"])

    assert path == "mailboxes_files[0]: teams.yaml[12].tenant"  # the SPEC's example
    assert message == "unknown tenant 'tailspin' (tenants: contoso, fabrikam)"
    issue = ConfigIssue(path, message)
    assert str(issue).startswith("mailboxes_files[0]: teams.yaml[12].tenant: unknown tenant")


ENTRY_ERRORS = [
    pytest.param({"pol_interval": "30s"}, "[0].pol_interval", "unknown key", id="unknown-key"),
    pytest.param({"poll_interval": "0s"}, "[0].poll_interval", "at least 1s", id="interval"),
    pytest.param({"poll_interval": "soon"}, "[0].poll_interval", "duration", id="bad-duration"),
    pytest.param({"address": "nobody"}, "[0].address", "not a mail address", id="address"),
    pytest.param({"tenant": None}, "[0].tenant", "must be a string", id="tenant-null"),
    pytest.param({"folders": []}, "[0].folders", "at least 1", id="no-folders"),
    pytest.param({"enabled": "no"}, "[0].enabled", "true or false", id="enabled"),
    pytest.param({"client_secret": "x"}, "[0].client_secret", "unknown key", id="secret-key"),
]


@pytest.mark.parametrize(("change", "suffix", "message"), ENTRY_ERRORS)
def test_entry_errors_in_a_file(
    errors: Callable[..., list[tuple[str, str]]],
    write: Write,
    change: dict[str, Any],
    suffix: str,
    message: str,
) -> None:
    write("lists/teams.yaml", [{**entry("t@contoso.com"), **change}])

    [(path, text)] = errors(["lists/*.yaml"])

    assert path == "mailboxes_files[0]: lists/teams.yaml" + suffix
    assert message in text


FILE_ERRORS = [
    pytest.param("- 7\n", "[0]", "must be a mapping", id="entry-not-a-mapping"),
    pytest.param(
        "mailboxes:\n  - {address: t@contoso.com, tenant: contoso}\n",
        "",
        "must be a YAML list of mailbox entries: write the entries at the top level",
        id="a-mapping-with-mailboxes",
    ),
    pytest.param("address: t@contoso.com\n", "", "must be a YAML list", id="a-mapping"),
    pytest.param("just text\n", "", "must be a YAML list", id="a-scalar"),
    pytest.param("", "", "the file is empty (write []", id="empty"),
    pytest.param("# all\n# commented out\n", "", "the file is empty", id="only-comments"),
    pytest.param(
        "- {address: t@contoso.com, tenant: contoso}\n- {address: u@contoso.com\n",
        "",
        "invalid YAML at line 3, column 1",
        id="yaml-syntax",
    ),
    pytest.param(
        "- address: t@contoso.com\n  tenant: contoso\n  tenant: fabrikam\n",
        "",
        "invalid YAML at line 3, column 3: duplicate key 'tenant'",
        id="duplicate-key",
    ),
    pytest.param(b"- \xff\xfe\n", "", "is not UTF-8 text", id="not-utf8"),
]


@pytest.mark.parametrize(("content", "suffix", "message"), FILE_ERRORS)
def test_file_errors_name_the_file(
    errors: Callable[..., list[tuple[str, str]]],
    write: Write,
    content: str | bytes,
    suffix: str,
    message: str,
) -> None:
    write("teams.yaml", content)

    [(path, text)] = errors(["teams.yaml"])

    assert (path, message in text) == ("mailboxes_files[0]: teams.yaml" + suffix, True), text


def test_an_unreadable_file_is_an_error(
    errors: Callable[..., list[tuple[str, str]]], write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    teams = write("teams.yaml", [entry("t@contoso.com")])
    read_text = Path.read_text

    def refuse(self: Path, *args: Any, **kwargs: Any) -> str:
        if self == teams:
            raise PermissionError(13, "Permission denied")
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refuse)

    assert errors(["teams.yaml"]) == [
        ("mailboxes_files[0]: teams.yaml", "cannot be read: Permission denied")
    ]


def test_a_directory_or_a_dangling_link_named_by_a_plain_path(
    errors: Callable[..., list[tuple[str, str]]], config_dir: Path
) -> None:
    (config_dir / "teams").mkdir()
    (config_dir / "gone.yaml").symlink_to("nowhere.yaml")

    assert errors(["teams", "gone.yaml"]) == [
        ("mailboxes_files[0]: teams", "is a directory"),
        ("mailboxes_files[1]: gone.yaml", "does not exist"),
    ]


@pytest.mark.parametrize("pattern", ["teams.yaml", "teams/*.yaml", "/nonexistent/**/*.yaml"])
def test_a_pattern_that_matches_no_file_is_an_error(
    errors: Callable[..., list[tuple[str, str]]], config_dir: Path, pattern: str
) -> None:
    [(path, message)] = errors([pattern])

    assert path == "mailboxes_files[0]"
    assert message == f"no file matches {pattern!r} (relative paths start at {config_dir})"


def test_patterns_that_are_not_paths(
    errors: Callable[..., list[tuple[str, str]]], load: Callable[..., Config], write: Write
) -> None:
    write("teams.yaml", [entry("t@contoso.com")])

    assert [p for p, _ in errors(["teams.yaml", 3, "  "])] == [
        "mailboxes_files[1]",
        "mailboxes_files[2]",
    ]
    with pytest.raises(ConfigError) as info:
        load("teams.yaml")
    assert [(i.path, i.message) for i in info.value.errors] == [
        ("mailboxes_files", "must be a list")
    ]
    assert load(None).mailboxes_files == ()  # `mailboxes_files:` left empty


def test_a_file_listed_twice_or_the_config_itself(
    errors: Callable[..., list[tuple[str, str]]], write: Write, config_dir: Path
) -> None:
    write("teams/a.yaml", [entry("t@contoso.com")])
    (config_dir / "alias.yaml").symlink_to("teams/a.yaml")

    assert errors(["teams/*.yaml", "teams/a.yaml", "alias.yaml", "mailsyncd.yaml"]) == [
        (
            "mailboxes_files[1]: teams/a.yaml",
            "is already read through mailboxes_files[0]: teams/a.yaml; list each file once",
        ),
        (
            "mailboxes_files[2]: alias.yaml",
            "is already read through mailboxes_files[0]: teams/a.yaml; list each file once",
        ),
        (
            "mailboxes_files[3]: mailsyncd.yaml",
            "is the configuration file itself, not a mailbox list",
        ),
    ]


DUPLICATES = [
    pytest.param(
        [entry("Same@contoso.com")],
        {"a.yaml": [entry("same@CONTOSO.com")]},
        ("lists/a.yaml[0].address", "duplicate of mailboxes[0].address"),
        id="inline-then-file",
    ),
    pytest.param(
        [],
        {
            "a.yaml": [entry("x@contoso.com"), entry("same@contoso.com")],
            "b.yaml": [entry("SAME@contoso.com", "fabrikam")],
        },
        ("lists/b.yaml[0].address", "duplicate of mailboxes_files[0]: lists/a.yaml[1].address"),
        id="file-then-file",
    ),
    pytest.param(
        [],
        {"a.yaml": [entry("same@contoso.com"), entry("x@contoso.com"), entry("same@contoso.com")]},
        ("lists/a.yaml[2].address", "duplicate of mailboxes_files[0]: lists/a.yaml[0].address"),
        id="within-a-file",
    ),
]


@pytest.mark.parametrize(("inline", "files", "expected"), DUPLICATES)
def test_an_address_listed_twice_anywhere_names_its_second_occurrence(
    errors: Callable[..., list[tuple[str, str]]],
    write: Write,
    inline: list[Any],
    files: dict[str, list[Any]],
    expected: tuple[str, str],
) -> None:
    for name, entries in files.items():
        write(f"lists/{name}", entries)

    [(path, message)] = errors(["lists/*.yaml"], inline)

    assert path == f"mailboxes_files[0]: {expected[0]}"
    assert message == f"{expected[1]} (same@contoso.com)"


def test_every_error_of_every_file_is_reported_at_once_in_file_order(
    errors: Callable[..., list[tuple[str, str]]], write: Write
) -> None:
    write("teams/a.yaml", [entry("a@contoso.com"), entry("b@contoso.com", "nope"), 7])
    write("teams/b.yaml", "- {address: c@contoso.com\n")
    write("teams/c.yaml", [entry("A@contoso.com", poll_interval="0s")])

    found = errors(
        ["teams/*.yaml", "missing/*.yaml"],
        [entry("inline@contoso.com", pol=1), entry("z@contoso.com", "nope")],
    )

    assert [path for path, _ in found] == [
        "mailboxes[0].pol",
        "mailboxes[1].tenant",
        "mailboxes_files[0]: teams/a.yaml[1].tenant",
        "mailboxes_files[0]: teams/a.yaml[2]",
        "mailboxes_files[0]: teams/b.yaml",
        "mailboxes_files[0]: teams/c.yaml[0].poll_interval",
        "mailboxes_files[0]: teams/c.yaml[0].address",
        "mailboxes_files[1]",
    ]


def test_a_yaml_error_in_a_mailbox_file_does_not_quote_the_line(
    errors: Callable[..., list[tuple[str, str]]], write: Write
) -> None:
    write("teams.yaml", "- {address: t@contoso.com, note: [s3cr3t-VALUE-Zq9\n")

    [(_path, message)] = errors(["teams.yaml"])

    assert "s3cr3t-VALUE-Zq9" not in message


# -- the examples ------------------------------------------------------------------------------


def test_the_example_mailbox_file_loads_with_the_example_configuration(tmp_path: Path) -> None:
    config_dir = Path(__file__).resolve().parents[2] / "config"
    for name in ("contoso-client-secret", "fabrikam-key.pem", "fabrikam-cert.pem"):
        (tmp_path / name).write_text("x\n")
    text = (config_dir / "example.yaml").read_text(encoding="utf-8")
    assert "\nmailboxes_files: []" in text
    text = text.replace("/run/secrets/", f"{tmp_path}/")
    text = text.replace("\nmailboxes_files: []", "\nmailboxes_files: [mailboxes.example.yaml]")
    (tmp_path / "mailsyncd.yaml").write_text(text)
    example = (config_dir / "mailboxes.example.yaml").read_text(encoding="utf-8")
    (tmp_path / "mailboxes.example.yaml").write_text(example)

    config = load_config(tmp_path / "mailsyncd.yaml", {})

    assert [m.address for m in config.mailboxes][2:] == [
        "alice@contoso.com",
        "bob@contoso.com",
        "carol@fabrikam.com",
        "old-team@fabrikam.com",
    ]
    assert config.mailbox_key_path(5) == "mailboxes_files[0]: mailboxes.example.yaml[3]"


# -- validate ----------------------------------------------------------------------------------


def test_validate_reads_the_mailbox_files(write: Write, capsys: pytest.CaptureFixture[str]) -> None:
    write("teams.yaml", [entry(f"u{i}@contoso.com") for i in range(3)])
    main = write("mailsyncd.yaml", main_document(["teams.yaml"], [entry("x@contoso.com")]))

    assert commands.validate(argparse.Namespace(config=str(main))) == 0
    assert "4 mailbox(es)" in capsys.readouterr().out

    write("teams.yaml", [entry("u@contoso.com", "nope")])
    assert commands.validate(argparse.Namespace(config=str(main))) == 2
    assert "mailboxes_files[0]: teams.yaml[0].tenant: unknown tenant" in capsys.readouterr().err


# -- the files to watch ------------------------------------------------------------------------


def _touch(path: Path, text: str) -> None:
    """Rewrite *path* and make sure its mtime moves even on a coarse clock."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(before + 10**9, before + 10**9))


def test_sources_name_every_file_read_and_notice_each_kind_of_change(
    load: Callable[..., Config], write: Write, config_dir: Path
) -> None:
    write("teams/a.yaml", [entry("a@contoso.com")])
    write("teams/b.yaml", [entry("b@contoso.com")])
    config = load(["teams/*.yaml"])
    sources = config.sources

    assert sources.files == (
        config_dir / "mailsyncd.yaml",
        config_dir / "teams" / "a.yaml",
        config_dir / "teams" / "b.yaml",
    )
    assert all(path.is_absolute() for path in sources.files)
    assert sources.current_stamp() == sources.stamp  # nothing changed yet
    assert not sources.changed()

    _touch(config_dir / "teams" / "a.yaml", yaml.safe_dump([entry("a2@contoso.com")]))
    edited = sources.current_stamp()
    assert edited != sources.stamp

    write("teams/c.yaml", [entry("c@contoso.com")])  # a new file matching the glob
    added = sources.current_stamp()
    assert added != edited
    assert len(added) == 4

    (config_dir / "teams" / "b.yaml").unlink()
    assert sources.current_stamp() != added

    _touch(config_dir / "mailsyncd.yaml", "database: {}\n")  # the configuration file itself
    assert sources.current_stamp()[0] != sources.stamp[0]
    assert sources.changed()


def test_replacing_a_symlink_target_changes_the_stamp(
    load: Callable[..., Config], write: Write, config_dir: Path
) -> None:
    # the ConfigMap update: a new timestamped directory, then ..data is swapped to it
    write("cm/..v1/teams.yaml", [entry("a@contoso.com")])
    write("cm/..v2/teams.yaml", [entry("a@contoso.com")])
    (config_dir / "cm" / "..data").symlink_to("..v1")
    (config_dir / "cm" / "teams.yaml").symlink_to("..data/teams.yaml")
    sources = load(["cm/teams.yaml"]).sources

    (config_dir / "cm" / "..data_tmp").symlink_to("..v2")
    (config_dir / "cm" / "..data_tmp").replace(config_dir / "cm" / "..data")

    assert sources.files[1] == config_dir / "cm" / "teams.yaml"
    assert sources.current_stamp() != sources.stamp


def test_a_rejected_configuration_still_names_its_files(
    load: Callable[..., Config], write: Write, config_dir: Path
) -> None:
    """A watcher waits for one of these to change before it tries again."""
    write("teams.yaml", [entry("t@contoso.com", "nope")])

    with pytest.raises(ConfigError) as info:
        load(["teams.yaml", "later.yaml"])

    sources = info.value.sources
    assert sources is not None
    assert sources.files == (config_dir / "mailsyncd.yaml", config_dir / "teams.yaml")
    assert sources.current_stamp() == sources.stamp
    assert not sources.changed()
    write("later.yaml", [entry("l@contoso.com")])  # the file the error asked for appears
    assert sources.changed()


def test_a_configuration_file_that_does_not_parse_is_watched_too(tmp_path: Path) -> None:
    path = tmp_path / "mailsyncd.yaml"
    path.write_text("database: [\n")

    with pytest.raises(ConfigError) as info:
        load_config(path, {})

    assert info.value.sources is not None
    assert info.value.sources.files == (path,)
    assert info.value.sources.stamp == info.value.sources.current_stamp()


def test_a_configuration_built_from_a_mapping_has_no_files(config_dir: Path) -> None:
    document = main_document([])
    document["tenants"][0]["credential"]["client_secret_file"] = str(config_dir / "client-secret")
    document["tenants"][1]["credential"]["client_secret_file"] = str(config_dir / "client-secret")

    config = Config.model_validate(document)

    assert (config.sources.files, config.sources.stamp, config.sources.current_stamp()) == (
        (),
        (),
        (),
    )
    assert config.mailbox_key_path(3) == "mailboxes[3]"


# -- scale -------------------------------------------------------------------------------------


def test_ten_thousand_entries_across_files_load_quickly(
    load: Callable[..., Config], write: Write
) -> None:
    for team in range(4):
        write(
            f"teams/team{team}.yaml",
            [
                entry(f"user{team}-{i:05d}@contoso.com", poll_interval="5m", folders=["INBOX"])
                for i in range(2500)
            ],
        )

    started = time.perf_counter()
    config = load(["teams/*.yaml"])
    elapsed = time.perf_counter() - started

    assert len(config.mailboxes) == 10_000
    assert config.mailbox_key_path(9_999) == "mailboxes_files[0]: teams/team3.yaml[2499]"
    assert elapsed < 5.0, f"10,000 entries took {elapsed:.2f}s"  # about 1s on a busy 2-core box


# -- the YAML reader's shortcuts ---------------------------------------------------------------


PLAIN_YAML = """\
- address: a@contoso.com
  enabled: yes
  backfill_days: 0x1e
  poll_interval: 1_000
  ratio: 1.5e3
  off: off
  nothing: ~
  empty:
  when: 2024-01-02
  quoted: "30"
  single: '12'
  block: |
    two
    lines
  tagged: !!str 42
  number_key: {1: one, true: yes, null: nothing}
  list: [INBOX, "Sent Items", 3, true, null, [nested]]
"""
ALIASED_YAML = """\
base: &base {tenant: contoso, enabled: yes, folders: &folders [INBOX]}
entries:
  - <<: *base
    address: a@contoso.com
  - *base
  - {address: b@contoso.com, folders: *folders}
set: !!set {a, b}
pairs: !!omap [{a: 1}, {b: 2}]
"""


@pytest.mark.parametrize("text", [PLAIN_YAML, ALIASED_YAML], ids=["plain", "aliases-and-tags"])
def test_the_yaml_reader_reads_what_safe_load_reads(tmp_path: Path, text: str) -> None:
    path = tmp_path / "doc.yaml"
    path.write_text(text)

    document, problem = _parse_yaml(path)

    assert problem is None
    assert document == yaml.safe_load(text)


def test_the_yaml_reader_keeps_aliases_shared_and_reads_recursive_ones(tmp_path: Path) -> None:
    path = tmp_path / "doc.yaml"
    path.write_text("a: &x [1]\nb: *x\nc: &r [*r]\n")

    document, problem = _parse_yaml(path)

    assert problem is None
    assert isinstance(document, dict)
    assert document["a"] is document["b"]
    assert document["c"][0] is document["c"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- {a: 1, a: 2}\n", "line 1, column 10: duplicate key 'a'"),
        ("x: &x {a: 1}\ny: {<<: *x, b: 1, b: 2}\n", "line 2, column 19: duplicate key 'b'"),
        ("? [a, b]\n: x\n", "found unhashable key"),
        ("[" * 5000 + "]" * 5000 + "\n", "invalid YAML"),
    ],
    ids=["duplicate-key", "duplicate-key-beside-a-merge", "unhashable-key", "nested-too-deep"],
)
def test_the_yaml_reader_rejects_what_it_must(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "doc.yaml"
    path.write_text(text)

    document, problem = _parse_yaml(path)

    assert document is None
    assert problem is not None
    assert message in problem
