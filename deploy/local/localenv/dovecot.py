"""Dovecot configured as a stand-in for Exchange Online's IMAP endpoint.

IMAPS on a loopback port with a throwaway CA; XOAUTH2 and OAUTHBEARER validated locally as JWTs
(signature against a key directory, issuer, audience, expiry, application id), one oauth2 passdb
per tenant; a master user (``<mailbox>*fixture``) that can read and write any mailbox.

Where its files live: run as root, Dovecot's processes run as other users (``dovecot`` for
authentication, the mail user for mailboxes, ``dovenull`` for logins), and they must reach
their configuration, keys, sockets and mail. The environment's own directory may be anywhere,
for example in a checkout under root's 0700 home, so those files live in a runtime directory
of their own, ``/tmp/mailsyncd-dovecot-*`` (mode 0755), made per start and removed at stop.
The TLS key and Dovecot's log stay in the environment's directory: only root reads and
writes those (Dovecot's master and config processes).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from localenv.tokens import EXCHANGE_RESOURCE, issuer_for

MASTER_SEPARATOR = "*"
MASTER_USER = "fixture"

# Sized for benchmarks holding 10,000+ concurrent sessions (deploy/local/README.md).
LOGIN_PROCESSES = 8
LOGIN_CLIENTS = 4000  # sessions per imap-login process
IMAP_PROCESSES = 500
IMAP_CLIENTS = 40  # sessions per imap process: IMAP_PROCESSES * IMAP_CLIENTS = 20,000
AUTH_CLIENTS = 5000  # auth and stats: connections from login and imap processes
FD_LIMIT = 65536  # RLIMIT_NOFILE Dovecot is started with (when the hard limit allows)


def dovecot_binary() -> str:
    found = shutil.which("dovecot") or (
        "/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").exists() else None
    )
    if found is None:
        raise RuntimeError(
            "dovecot is not installed: run `make packages` (apt-get install -y dovecot-imapd)"
        )
    return found


def command(conf: Path) -> list[str]:
    """``dovecot -F -c conf`` with RLIMIT_NOFILE raised to ``FD_LIMIT`` (or, without the right
    to raise the hard limit, to the hard limit): Dovecot's master warns at start when the limit
    is below what its services may need under full load. The shell execs Dovecot: same PID."""
    raise_limit = (
        f'ulimit -n {FD_LIMIT} 2>/dev/null || ulimit -n "$(ulimit -H -n)" 2>/dev/null; '
        'exec "$0" "$@"'
    )
    return ["/bin/sh", "-c", raise_limit, dovecot_binary(), "-F", "-c", str(conf)]


def make_runtime_dir() -> Path:
    """A new directory for the files Dovecot's unprivileged processes read: under the system
    temp dir, which every user can search, and searchable itself (0755)."""
    path = Path(tempfile.mkdtemp(prefix="mailsyncd-dovecot-"))
    path.chmod(0o755)
    return path


def remove_runtime_dir(path: Path) -> None:
    """Remove a directory made by ``make_runtime_dir`` (and nothing else)."""
    if path.name.startswith("mailsyncd-dovecot-") and path.parent == Path(tempfile.gettempdir()):
        shutil.rmtree(path, ignore_errors=True)


def mail_user() -> tuple[str, int, int]:
    """The system user that owns the mail files: ``vmail`` when running as root."""
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return entry.pw_name, entry.pw_uid, entry.pw_gid
    try:
        entry = pwd.getpwnam("vmail")
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "vmail"],
            check=True,
        )
        entry = pwd.getpwnam("vmail")
    return entry.pw_name, entry.pw_uid, entry.pw_gid


@dataclass(frozen=True)
class TenantAuth:
    tenant_id: str
    client_id: str


def write_config(
    root: Path,
    runtime: Path,
    *,
    port: int,
    cert_file: Path,
    key_file: Path,
    tenants: list[TenantAuth],
    public_key_pem: bytes,
    kid: str,
    master_password: str,
) -> Path:
    """Write dovecot.conf and its companions under ``runtime`` (see ``make_runtime_dir``) and
    return its path; the log goes to ``root/dovecot/dovecot.log``."""
    base = runtime
    logs = root / "dovecot"
    logs.mkdir(parents=True, exist_ok=True)
    for sub in ("run", "state", "keys/default/RS256"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    user, uid, gid = mail_user()
    mail = base / "mail"
    mail.mkdir(exist_ok=True)
    os.chown(mail, uid, gid)
    (base / "keys/default/RS256" / kid).write_bytes(public_key_pem)

    master_file = base / "master-users"
    master_file.write_text(f"{MASTER_USER}:{{PLAIN}}{master_password}\n")
    master_file.chmod(0o640)
    if os.geteuid() == 0:
        # Dovecot's auth process runs as the `dovecot` user and must read the master list.
        shutil.chown(master_file, group="dovecot")

    passdbs = []
    for tenant in tenants:
        ext = base / f"oauth2-{tenant.tenant_id}.conf.ext"
        ext.write_text(
            "\n".join(
                [
                    "introspection_mode = local",
                    f"local_validation_key_dict = fs:posix:prefix={base}/keys/",
                    f"issuers = {issuer_for(tenant.tenant_id)}",
                    f"client_id = {EXCHANGE_RESOURCE}",
                    "username_attribute = tid",
                    "username_format = app-only",
                    "active_attribute = appid",
                    f"active_value = {tenant.client_id}",
                    "",
                ]
            )
        )
        passdbs.append(
            "passdb {\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n"
            f"  args = {ext}\n}}\n"
        )
    login_users = ""
    if os.geteuid() != 0:
        login_users = f"default_login_user = {user}\ndefault_internal_user = {user}\n"
    conf = base / "dovecot.conf"
    conf.write_text(
        f"""# Generated by localenv: a throwaway Dovecot for tests and the demo.
base_dir = {base}/run
state_dir = {base}/state
log_path = {logs}/dovecot.log
info_log_path = {logs}/dovecot.log
{login_users}protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{cert_file}
ssl_key = <{key_file}
ssl_dh = </usr/share/dovecot/dh.pem
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = yes
mail_location = maildir:{mail}/%u
mail_fsync = never
first_valid_uid = {uid}
last_valid_uid = 0
first_valid_gid = {gid}
mail_max_userip_connections = 10000
# IMAP IDLE: changes reach an idling session through inotify; past the kernel's inotify
# instance limit (128 per user by default) Dovecot falls back to checking every mailbox_idle
# _check_interval, 30 s by default: 1 s keeps a stand-in with thousands of IDLEs prompt.
mailbox_idle_check_interval = 1 secs
auth_mechanisms = plain login xoauth2 oauthbearer
auth_master_user_separator = {MASTER_SEPARATOR}
auth_failure_delay = 0
auth_verbose = yes
auth_cache_size = 0
namespace inbox {{
  inbox = yes
  separator = /
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {port}
    ssl = yes
  }}
  # High-performance mode: a few long-lived login processes serve every connection (and
  # keep proxying its TLS after login: two descriptors per session).
  service_count = 0
  process_min_avail = 4
  process_limit = {LOGIN_PROCESSES}
  client_limit = {LOGIN_CLIENTS}
  # OpenSSL needs about 50 kB per session: the default 256 MB ends at about 5,000 sessions.
  vsz_limit = 1G
}}
service imap {{
  # Several sessions per process (all run as the one mail user): a process per session
  # costs about 0.7 MB each and thousands of processes.
  service_count = 0
  process_limit = {IMAP_PROCESSES}
  client_limit = {IMAP_CLIENTS}
  vsz_limit = 1G
}}
service auth {{
  client_limit = {AUTH_CLIENTS}
}}
service stats {{
  client_limit = {AUTH_CLIENTS}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {master_file}
  master = yes
}}
{"".join(passdbs)}userdb {{
  driver = static
  args = uid={uid} gid={gid} home={mail}/%u allow_all_users=yes
}}
"""
    )
    return conf
