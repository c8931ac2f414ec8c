"""Start and stop the whole local environment: identity platform and Dovecot.

``LocalEnv.start(dir)`` creates keys, certificates, two tenants with every credential type,
writes ``env.json`` (the description tests, the demo and the benchmark read) and starts both
servers; ``stop()`` ends them by PID, also from another process (``LocalEnv.load(dir).stop()``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jwt

from localenv import dovecot, pki
from localenv.tokens import mint_access_token

FEDERATED_ISSUER = "https://oidc.cluster.local.test/"
FEDERATED_SUBJECT = "system:serviceaccount:mailsyncd:mailsyncd"
FEDERATED_AUDIENCE = "api://AzureADTokenExchange"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


@dataclass
class TenantInfo:
    name: str
    tenant_id: str
    domain: str
    client_id: str
    secret_file: str
    certificate_file: str
    private_key_file: str
    thumbprint: str
    federated_token_file: str

    @property
    def secret(self) -> str:
        return Path(self.secret_file).read_text().strip()


@dataclass
class EnvInfo:
    dir: str
    ca_file: str
    imap_host: str
    imap_port: int
    idp_port: int
    fixture_password: str
    signing_key_file: str
    kid: str
    federated_key_file: str
    tenants: list[TenantInfo]
    pids: dict[str, int] = field(default_factory=dict)
    # Dovecot's configuration, keys, sockets and mail (dovecot.make_runtime_dir): removed by
    # stop(), also when another process stops the environment.
    dovecot_dir: str = ""

    @property
    def authority_host(self) -> str:
        return f"https://127.0.0.1:{self.idp_port}"

    def tenant_config(
        self,
        name: str,
        *,
        like: str | None = None,
        secret_file: str | None = None,
        credential: dict[str, Any] | None = None,
        imap_port: int | None = None,
    ) -> dict[str, Any]:
        """A ``tenants[]`` entry of a mailsyncd config for tenant ``like`` (default ``name``),
        named ``name``: its client secret file unless ``credential`` is given; optionally
        broken on purpose (another secret file, another IMAP port)."""
        t = self.tenant(like or name)
        return {
            "name": name,
            "tenant_id": t.tenant_id,
            "client_id": t.client_id,
            "credential": credential or {"client_secret_file": secret_file or t.secret_file},
            "authority_host": self.authority_host,
            "imap": {"host": self.imap_host, "port": imap_port or self.imap_port},
        }

    def tenant(self, name: str) -> TenantInfo:
        for tenant in self.tenants:
            if name in (tenant.name, tenant.tenant_id, tenant.domain):
                return tenant
        raise KeyError(name)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def descendants(pid: int) -> set[int]:
    """PIDs of every process below ``pid`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def stop_pid(pid: int, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; returns once the process is gone."""
    if not _alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    while _alive(pid):
        time.sleep(0.02)


def _wait_tls(port: int, ca_file: str, deadline: float, expect: bytes = b"") -> None:
    context = ssl.create_default_context(cafile=ca_file)
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=1) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
            ):
                greeting = tls.recv(200) if expect else b""
        except OSError as exc:
            last = exc
            time.sleep(0.02)
            continue
        if greeting.startswith(expect):
            return
        last = RuntimeError(f"unexpected greeting {greeting!r}")
        time.sleep(0.02)
    raise RuntimeError(f"port {port} did not come up: {last}")


class LocalEnv:
    """The running (or described) local environment under one directory."""

    def __init__(self, info: EnvInfo) -> None:
        self.info = info
        self.root = Path(info.dir)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._remove_on_stop = False

    # -- lifecycle ------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        root: Path,
        *,
        tenants: tuple[str, ...] = ("contoso", "fabrikam"),
        token_lifetime: float = 3600,
        fixed_ids: dict[str, tuple[str, str]] | None = None,
        imap_port: int = 0,
        idp_port: int = 0,
    ) -> LocalEnv:
        """Create and start an environment in ``root``.

        ``fixed_ids`` maps tenant names to (tenant_id, client_id) and the ports may be fixed,
        so that a static configuration file (the demo's) can describe it; 0 picks free ports.
        """
        root = root.resolve()
        root.mkdir(parents=True, exist_ok=True)
        # What Dovecot's unprivileged processes read lives in a runtime directory of its own,
        # so the environment's directory may be anywhere, also where no other user can search.
        runtime = dovecot.make_runtime_dir()
        try:
            info = cls._prepare(
                root,
                runtime,
                names=tenants,
                token_lifetime=token_lifetime,
                fixed_ids=fixed_ids or {},
                imap_port=imap_port,
                idp_port=idp_port,
            )
        except BaseException:
            dovecot.remove_runtime_dir(runtime)
            raise
        env = cls(info)
        try:
            env._launch()
        except BaseException:
            env.stop()
            raise
        return env

    @classmethod
    def start_temporary(cls, **kwargs: Any) -> LocalEnv:
        """Start in a new directory under the system temp dir; ``stop()`` removes it."""
        env = cls.start(Path(tempfile.mkdtemp(prefix="mailsyncd-env-")), **kwargs)
        env._remove_on_stop = True
        return env

    @classmethod
    def load(cls, root: Path) -> LocalEnv:
        raw = json.loads((root / "env.json").read_text())
        raw["tenants"] = [TenantInfo(**t) for t in raw["tenants"]]
        return cls(EnvInfo(**raw))

    def stop(self) -> None:
        """Stop every process this environment started, by PID. Idempotent."""
        for name in ("dovecot", "idp"):
            pid = self.info.pids.get(name)
            if pid is None:
                continue
            proc = self._procs.pop(name, None)
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            else:
                stop_pid(pid)
            del self.info.pids[name]
        if self.info.dovecot_dir:
            dovecot.remove_runtime_dir(Path(self.info.dovecot_dir))
            self.info.dovecot_dir = ""
        if self._remove_on_stop:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            self._save()

    def __enter__(self) -> LocalEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- set-up ---------------------------------------------------------------------------
    @staticmethod
    def _prepare(
        root: Path,
        runtime: Path,
        *,
        names: tuple[str, ...],
        token_lifetime: float,
        fixed_ids: dict[str, tuple[str, str]],
        imap_port: int,
        idp_port: int,
    ) -> EnvInfo:
        tls = root / "tls"
        secrets_dir = root / "secrets"
        ca = pki.CertificateAuthority.create()
        server_key, server_cert = ca.issue_server()
        ca_file = tls / "ca.crt"
        tls.mkdir(parents=True, exist_ok=True)
        ca_file.write_bytes(pki.cert_pem(ca.cert))
        (tls / "server.crt").write_bytes(pki.cert_pem(server_cert))
        pki.write_private(tls / "server.key", pki.key_pem(server_key))
        # Dovecot reads its key as root before dropping privileges; Python's server as us.
        signing_key = pki.new_key()
        kid = uuid.uuid4().hex
        pki.write_private(root / "idp" / "signing.key", pki.key_pem(signing_key))
        federated_key = pki.new_key()
        pki.write_private(root / "idp" / "federated-issuer.key", pki.key_pem(federated_key))

        tenants: list[TenantInfo] = []
        for name in names:
            tenant_id, client_id = fixed_ids.get(name, (str(uuid.uuid4()), str(uuid.uuid4())))
            cert_key, cert = pki.self_signed(f"mailsyncd-{name}")
            tdir = secrets_dir / name
            secret_file = pki.write_private(
                tdir / "client-secret", (secrets.token_urlsafe(30) + "\n").encode()
            )
            key_file = pki.write_private(tdir / "key.pem", pki.key_pem(cert_key))
            cert_file = tdir / "cert.pem"
            cert_file.write_bytes(pki.cert_pem(cert))
            tenants.append(
                TenantInfo(
                    name=name,
                    tenant_id=tenant_id,
                    domain=f"{name}.test",
                    client_id=client_id,
                    secret_file=str(secret_file),
                    certificate_file=str(cert_file),
                    private_key_file=str(key_file),
                    thumbprint=pki.thumbprint(cert),
                    federated_token_file=str(tdir / "federated-token"),
                )
            )
        info = EnvInfo(
            dir=str(root),
            ca_file=str(ca_file),
            imap_host="127.0.0.1",
            imap_port=imap_port or free_port(),
            idp_port=idp_port,
            fixture_password=secrets.token_urlsafe(16),
            signing_key_file=str(root / "idp" / "signing.key"),
            kid=kid,
            federated_key_file=str(root / "idp" / "federated-issuer.key"),
            tenants=tenants,
            dovecot_dir=str(runtime),
        )
        env = LocalEnv(info)
        for tenant in tenants:
            env.write_federated_token(tenant.name)
        idp_config = {
            "host": "127.0.0.1",
            "port": idp_port,
            "cert_file": str(tls / "server.crt"),
            "key_file": str(tls / "server.key"),
            "signing_key_file": info.signing_key_file,
            "kid": kid,
            "token_lifetime": token_lifetime,
            "tenants": {
                t.tenant_id: {
                    "name": t.name,
                    "domains": [t.domain],
                    "clients": {
                        t.client_id: {
                            "secrets": [{"value": t.secret, "expires": None}],
                            "certificates": [Path(t.certificate_file).read_text()],
                            "federated": [
                                {
                                    "issuer": FEDERATED_ISSUER,
                                    "subject": FEDERATED_SUBJECT,
                                    "audience": FEDERATED_AUDIENCE,
                                    "public_key": pki.public_pem(federated_key).decode(),
                                }
                            ],
                        }
                    },
                }
                for t in tenants
            },
        }
        idp_file = root / "idp" / "idp.json"
        pki.write_private(idp_file, json.dumps(idp_config, indent=2).encode())
        dovecot.write_config(
            root,
            runtime,
            port=info.imap_port,
            cert_file=tls / "server.crt",
            key_file=tls / "server.key",
            tenants=[dovecot.TenantAuth(t.tenant_id, t.client_id) for t in tenants],
            public_key_pem=pki.public_pem(signing_key),
            kid=kid,
            master_password=info.fixture_password,
        )
        return info

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.out").open("ab")
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.root,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
        log.close()
        self._procs[name] = proc
        self.info.pids[name] = proc.pid
        self._save()
        return proc

    def _launch(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        port_file = self.root / "idp" / "idp.port"
        port_file.unlink(missing_ok=True)
        idp = self._spawn(
            "idp",
            [
                sys.executable,
                "-m",
                "localenv.idp",
                "--config",
                str(self.root / "idp" / "idp.json"),
                "--port-file",
                str(port_file),
            ],
        )
        conf = Path(self.info.dovecot_dir) / "dovecot.conf"
        self._spawn("dovecot", dovecot.command(conf))
        while not port_file.exists():
            if idp.poll() is not None:
                raise RuntimeError(f"identity platform exited; see {self.root / 'idp.out'}")
            if time.monotonic() > deadline:
                raise RuntimeError("identity platform did not start")
            time.sleep(0.01)
        self.info.idp_port = int(port_file.read_text())
        self._save()
        _wait_tls(self.info.idp_port, self.info.ca_file, deadline)
        proc = self._procs["dovecot"]
        try:
            _wait_tls(self.info.imap_port, self.info.ca_file, deadline, expect=b"* OK")
        except RuntimeError as exc:
            log = self.root / "dovecot" / "dovecot.log"
            detail = log.read_text()[-2000:] if log.exists() else ""
            out = (self.root / "dovecot.out").read_text()[-2000:]
            raise RuntimeError(
                f"dovecot did not start ({proc.poll()=}): {exc}\n{out}\n{detail}"
            ) from exc

    def _save(self) -> None:
        path = self.root / "env.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.info), indent=2))
        tmp.chmod(0o600)
        tmp.replace(path)

    # -- helpers for tests ----------------------------------------------------------------
    def write_federated_token(
        self, tenant: str, *, lifetime: float = 3600, subject: str = FEDERATED_SUBJECT
    ) -> Path:
        """(Re)write the tenant's projected service-account token, as the kubelet does."""
        info = self.info.tenant(tenant)
        key = pki.load_key(Path(self.info.federated_key_file))
        now = int(time.time())
        token = jwt.encode(
            {
                "iss": FEDERATED_ISSUER,
                "sub": subject,
                "aud": [FEDERATED_AUDIENCE],
                "iat": now - 5,
                "nbf": now - 5,
                "exp": now + int(lifetime),
            },
            key,
            algorithm="RS256",
            headers={"kid": "cluster"},
        )
        path = Path(info.federated_token_file)
        pki.write_private(path, token.encode())
        return path

    def mint_token(self, tenant: str, **kwargs: Any) -> str:
        """A token as the platform would issue it (kwargs as in ``mint_access_token``)."""
        info = self.info.tenant(tenant)
        key = pki.load_key(Path(self.info.signing_key_file))
        kwargs.setdefault("key", key)
        kwargs.setdefault("kid", self.info.kid)
        return mint_access_token(tenant_id=info.tenant_id, client_id=info.client_id, **kwargs)
