"""`make demo` takes a free port when one of config/demo.yaml's is busy, and says which."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import demo  # deploy/local/demo.py, on pytest's pythonpath
import pytest
import yaml

from daemon.config import config_from_mapping
from localenv.env import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something listens on for the duration of the test."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield int(listener.getsockname()[1])


def test_demo_ports_are_the_ones_config_demo_yaml_names() -> None:
    config = yaml.safe_load(demo.CONFIG.read_text())
    assert config["http"]["listen"] == f"127.0.0.1:{demo.PORTS['http']}"
    for tenant in config["tenants"]:
        assert tenant["imap"]["port"] == demo.PORTS["imap"]
        assert tenant["authority_host"] == f"https://127.0.0.1:{demo.PORTS['idp']}"


def test_a_busy_port_is_replaced_by_a_free_one_and_reported(busy_port: int) -> None:
    free = free_port()
    defaults = {"imap": busy_port, "idp": free, "http": busy_port}
    ports, notes = demo.choose_ports({}, defaults)
    assert ports["idp"] == free, "a free port is kept"
    assert busy_port not in ports.values()
    assert len(set(ports.values())) == 3
    for name in ("imap", "http"):
        assert demo.port_is_free(ports[name])
    assert notes == [
        f"port {busy_port} is busy: IMAPS (Dovecot) on 127.0.0.1:{ports['imap']} instead",
        f"port {busy_port} is busy: mailsyncd HTTP on 127.0.0.1:{ports['http']} instead",
    ]


def test_port_variables_choose_ports_and_zero_asks_for_any_free_one(busy_port: int) -> None:
    wanted = free_port()
    environ = {
        "DEMO_IMAP_PORT": str(wanted),
        "DEMO_IDP_PORT": "0",
        "DEMO_HTTP_PORT": str(busy_port),
    }
    ports, notes = demo.choose_ports(environ)
    assert ports["imap"] == wanted
    assert ports["idp"] not in (0, demo.PORTS["idp"])
    assert ports["http"] != busy_port
    assert notes[0] == f"DEMO_IDP_PORT=0: identity platform on 127.0.0.1:{ports['idp']} instead"
    assert notes[1].startswith(f"port {busy_port} is busy: mailsyncd HTTP on 127.0.0.1:")


def test_the_copy_with_other_ports_is_a_valid_configuration_naming_the_same_files(
    tmp_path: Path,
) -> None:
    ports = {"imap": 20993, "idp": 20443, "http": 29464}
    written = demo.write_demo_config(ports, tmp_path / "demo.yaml")
    raw = yaml.safe_load(written.read_text())
    # The environment's CA exists only while the demo runs; the path is asserted below.
    config = config_from_mapping({**raw, "tls": {}}, check_secrets=False)
    assert raw["http"]["listen"] == "127.0.0.1:29464"
    assert {t.imap.port for t in config.tenants} == {20993}
    assert {t.authority_host for t in config.tenants} == {"https://127.0.0.1:20443"}
    assert raw["database"]["url"] == "sqlite:///.demo/mailsyncd.db", "relative to the repository"
    # The same files as config/demo.yaml names, wherever the copy is.
    assert raw["tls"]["ca_file"] == str(ROOT / ".demo" / "env" / "tls" / "ca.crt")
    contoso, fabrikam = raw["tenants"]
    assert contoso["credential"]["client_secret_file"] == str(
        ROOT / ".demo" / "env" / "secrets" / "contoso" / "client-secret"
    )
    assert fabrikam["credential"]["certificate"]["private_key_file"] == str(
        ROOT / ".demo" / "env" / "secrets" / "fabrikam" / "key.pem"
    )
    unchanged = yaml.safe_load(demo.CONFIG.read_text())
    assert [m["address"] for m in raw["mailboxes"]] == [
        m["address"] for m in unchanged["mailboxes"]
    ]
