"""`make demo`: mailsyncd end to end on the local stand-in environment, with SQLite.

Starts the environment in .demo/env (the ports and ids of config/demo.yaml), seeds three
mailboxes in two tenants, runs `mailsyncd run -c config/demo.yaml`, appends a new message
every few seconds and says where to look. Ctrl-C stops everything it started, by PID.
DEMO_SECONDS=N stops by itself after N seconds.

Ports: IMAPS 10993, identity platform 10443 and mailsyncd's HTTP 9464, as config/demo.yaml
says. When one of them is busy the demo takes a free port instead, says which, and runs
mailsyncd with a copy of config/demo.yaml that names it (.demo/demo.yaml).
DEMO_IMAP_PORT, DEMO_IDP_PORT and DEMO_HTTP_PORT ask for other ports (0: any free port).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from localenv.env import LocalEnv, free_port
from localenv.imap import FixtureImap
from localenv.seed import hostile_messages, realistic_messages

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / ".demo"
CONFIG = ROOT / "config" / "demo.yaml"
FIXED_IDS = {
    "contoso": ("3c1d2e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f", "9e8d7c6b-5a4f-4e3d-9c2b-1a0f9e8d7c6b"),
    "fabrikam": ("fabrikam.test", "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"),
}
# What config/demo.yaml names (and the variable that asks for another port).
PORTS = {"imap": 10993, "idp": 10443, "http": 9464}
PORT_VARIABLES = {"imap": "DEMO_IMAP_PORT", "idp": "DEMO_IDP_PORT", "http": "DEMO_HTTP_PORT"}
PORT_NAMES = {"imap": "IMAPS (Dovecot)", "idp": "identity platform", "http": "mailsyncd HTTP"}
SEED = {
    ("alice@contoso.test", "INBOX"): 300,
    ("alice@contoso.test", "Sent Items"): 40,
    ("bob@contoso.test", "INBOX"): 120,
    ("carol@fabrikam.test", "INBOX"): 200,
}


def say(text: str) -> None:
    print(f"\033[1m[demo]\033[0m {text}" if sys.stdout.isatty() else f"[demo] {text}", flush=True)


def port_is_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:``port``. SO_REUSEADDR, as the servers set it: a port with
    connections in TIME_WAIT is free for them."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def choose_ports(
    environ: Mapping[str, str], defaults: Mapping[str, int] = PORTS
) -> tuple[dict[str, int], list[str]]:
    """The ports to use and a line for each that is not the one asked for.

    Each is its ``DEMO_*_PORT`` variable or the default; 0, or a port something already
    listens on, gives a free port instead.
    """
    chosen: dict[str, int] = {}
    notes: list[str] = []
    for name, default in defaults.items():
        variable = PORT_VARIABLES[name]
        wanted = int(environ.get(variable) or default)
        port = wanted
        if wanted == 0 or not port_is_free(wanted):
            port = free_port()
            while port in chosen.values():
                port = free_port()
            reason = f"{variable}=0" if wanted == 0 else f"port {wanted} is busy"
            notes.append(f"{reason}: {PORT_NAMES[name]} on 127.0.0.1:{port} instead")
        chosen[name] = port
    return chosen, notes


def _absolute_files(node: Any, base: Path) -> Any:
    """``node`` with every relative ``*_file`` path made absolute against ``base``."""
    if isinstance(node, dict):
        return {
            key: (
                str((base / value).resolve())
                if key.endswith("_file")
                and isinstance(value, str)
                and not Path(value).is_absolute()
                else _absolute_files(value, base)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_absolute_files(item, base) for item in node]
    return node


def demo_config(ports: Mapping[str, int], config_file: Path = CONFIG) -> dict[str, Any]:
    """config/demo.yaml with other ports: file paths made absolute (the copy lives elsewhere),
    the SQLite path left relative to the repository (where mailsyncd runs)."""
    config: dict[str, Any] = _absolute_files(
        yaml.safe_load(config_file.read_text()), config_file.parent
    )
    config["http"]["listen"] = f"127.0.0.1:{ports['http']}"
    for tenant in config["tenants"]:
        tenant["authority_host"] = f"https://127.0.0.1:{ports['idp']}"
        tenant["imap"]["port"] = ports["imap"]
    return config


def write_demo_config(ports: Mapping[str, int], target: Path) -> Path:
    header = (
        f"# config/demo.yaml with the ports this run of the demo uses: {dict(ports)}.\n"
        "# Written by deploy/local/demo.py; the next `make demo` replaces it.\n"
    )
    target.write_text(header + yaml.safe_dump(demo_config(ports), sort_keys=False))
    return target


def main() -> int:
    seconds = float(os.environ.get("DEMO_SECONDS", "0") or 0)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    if (DEMO / "env" / "env.json").exists():
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            LocalEnv.load(DEMO / "env").stop()  # a previous demo killed hard
    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir()
    ports, notes = choose_ports(os.environ)
    for note in notes:
        say(note)
    config = CONFIG if ports == PORTS else write_demo_config(ports, DEMO / "demo.yaml")
    say(
        f"starting the local environment (Dovecot on 127.0.0.1:{ports['imap']}, "
        f"identity platform on :{ports['idp']})"
    )
    env = LocalEnv.start(
        DEMO / "env", fixed_ids=FIXED_IDS, imap_port=ports["imap"], idp_port=ports["idp"]
    )
    daemon: subprocess.Popen[bytes] | None = None
    try:
        rng = random.Random(7)
        for (mailbox, folder), count in SEED.items():
            with FixtureImap(env.info, mailbox) as imap:
                messages = list(
                    realistic_messages(count, seed=rng.randint(0, 10**6), max_size=256 * 1024)
                )
                if folder == "INBOX" and mailbox.startswith("alice"):
                    messages += hostile_messages()
                imap.append(folder, messages)
            say(f"seeded {len(messages)} messages into {mailbox} / {folder}")
        mailsyncd = Path(sys.executable).with_name("mailsyncd")
        say(f"running: mailsyncd run -c {config.relative_to(ROOT)}")
        daemon = subprocess.Popen([str(mailsyncd), "run", "-c", str(config)], cwd=ROOT)
        say("look here while it runs:")
        say(f"  metrics:  curl -s http://127.0.0.1:{ports['http']}/metrics | grep ^mailsyncd_")
        say(f"  ready:    curl -s http://127.0.0.1:{ports['http']}/readyz")
        query = (
            "select mailbox, folder, uid, subject, from_address, sent_at, flags "
            "from message_metadata order by first_seen_at desc limit 5"
        )
        python = (
            ".venv/bin/python -c \"import sqlite3; db = sqlite3.connect('.demo/mailsyncd.db'); "
        )
        say(f"  data:     {python}[print(r) for r in db.execute('{query}')]\"")
        say("a new message arrives every 5 seconds; Ctrl-C stops everything")
        started = time.monotonic()
        counter = 0
        while not stop.wait(5.0):
            if daemon.poll() is not None:
                say(f"mailsyncd exited with {daemon.returncode}")
                return 1
            if seconds and time.monotonic() - started >= seconds:
                break
            counter += 1
            mailbox = rng.choice(["alice@contoso.test", "bob@contoso.test", "carol@fabrikam.test"])
            message = next(iter(realistic_messages(1, seed=10_000 + counter, max_size=64 * 1024)))
            with FixtureImap(env.info, mailbox) as imap:
                imap.append("INBOX", [message])
            say(f"appended message #{counter} to {mailbox}")
        return 0
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
            say(f"mailsyncd stopped (exit {daemon.returncode})")
        env.stop()
        say("local environment stopped; the database stays in .demo/mailsyncd.db")


if __name__ == "__main__":
    raise SystemExit(main())
