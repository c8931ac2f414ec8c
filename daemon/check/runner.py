"""Runs the steps of ``mailsyncd check`` in order, each bounded in time, skipping dependents.

First the database, when its URL is available here (``database.py``; skipped otherwise).
Per tenant: credential -> token -> token.audience / token.roles / token.expiry, and
imap.dns -> imap.tcp -> imap.tls; per mailbox: imap.login (needs the token and imap.tls) ->
imap.examine per folder. The same adapters as ``mailsyncd run`` do the work (MsalTokenClient,
ImapMailbox, make_ssl_context), so a passing check means the daemon gets as far.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from daemon.auth import AccessToken
from daemon.auth.msal_provider import MsalTokenClient
from daemon.check import diagnose
from daemon.check.credential import check_credential
from daemon.check.database import DatabaseSource, check_database
from daemon.check.model import Finding, Step
from daemon.check.network import (
    StepTimeout,
    bounded,
    check_dns,
    check_tcp,
    check_tls,
    ssl_context_or_finding,
)
from daemon.config import Config, MailboxSettings, Tenant
from daemon.errors import FolderMissing, ImapError, MailsyncError
from daemon.imap.client import ImapMailbox

DEFAULT_TIMEOUT = 10.0
Emit = Callable[[Step], None]


@dataclass
class _Recorder:
    emit: Emit
    steps: list[Step] = field(default_factory=list)

    def add(self, step: Step) -> Step:
        self.steps.append(step)
        self.emit(step)
        return step

    def found(self, step_id: str, finding: Finding, started: float, where: _Where) -> Step:
        return self.add(
            Step(
                step_id,
                finding.status,
                finding.detail,
                tenant=where.tenant,
                mailbox=where.mailbox,
                folder=where.folder,
                cause=finding.cause,
                fix=finding.fix,
                duration_s=time.monotonic() - started,
                data=finding.data,
            )
        )

    def skip(self, step_id: str, after: str, where: _Where, detail: str | None = None) -> Step:
        return self.add(
            Step(
                step_id,
                "skip",
                detail or f"not run: {after} failed",
                tenant=where.tenant,
                mailbox=where.mailbox,
                folder=where.folder,
                data={"blocked_by": after},
            )
        )


@dataclass(frozen=True, slots=True)
class _Where:
    tenant: str
    mailbox: str | None = None
    folder: str | None = None

    def at(self, folder: str) -> _Where:
        return _Where(self.tenant, self.mailbox, folder)


def run_check(
    config: Config,
    *,
    config_path: str,
    mailboxes: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
    emit: Emit = lambda _step: None,
    database: DatabaseSource = DatabaseSource(),  # noqa: B008 - frozen, immutable
) -> list[Step]:
    """Check ``config`` (only ``mailboxes`` and their tenants, if any are named); every step.

    ``database`` says whether the configuration's database URL is the real one here.
    """
    recorder = _Recorder(emit)
    settings = config.mailbox_settings()
    wanted = {address.lower() for address in mailboxes}
    chosen = [(i, m) for i, m in enumerate(settings) if not wanted or m.address in wanted]
    tenant_names = {m.tenant for _, m in chosen}
    tenants = [(i, t) for i, t in enumerate(config.tenants) if not wanted or t.name in tenant_names]
    recorder.add(
        Step(
            "config",
            "pass",
            f"{config_path} is valid: {len(config.tenants)} tenant(s), "
            f"{len(config.mailboxes)} mailbox(es); checking {len(tenants)} tenant(s), "
            f"{len(chosen)} mailbox(es)",
        )
    )
    _database(recorder, config, database, timeout)
    ca_file = str(config.tls.ca_file) if config.tls.ca_file else None
    client = MsalTokenClient([t for _, t in tenants], ca_file=ca_file)
    context = ssl_context_or_finding(ca_file)
    for index, tenant in tenants:
        _TenantCheck(
            recorder,
            tenant=tenant,
            key=f"tenants[{index}]",
            client=client,
            context=context,
            ca_file=ca_file,
            timeout=timeout,
            config=config,
        ).run([(i, m) for i, m in chosen if m.tenant == tenant.name])
    return recorder.steps


def _database(recorder: _Recorder, config: Config, source: DatabaseSource, timeout: float) -> None:
    started = time.monotonic()
    finding = check_database(config, source, timeout)
    if finding is None:
        variable = source.unset_variable
        recorder.add(
            Step(
                "database",
                "skip",
                f"not run: database.url_env names {variable}, which is not set here (check "
                "needs no database; set it to check the database too)",
                data={"variable": variable},
            )
        )
        return
    recorder.add(
        Step(
            "database",
            finding.status,
            finding.detail,
            cause=finding.cause,
            fix=finding.fix,
            duration_s=time.monotonic() - started,
            data=finding.data,
        )
    )


@dataclass
class _TenantCheck:
    recorder: _Recorder
    tenant: Tenant
    key: str
    client: MsalTokenClient
    context: ssl.SSLContext | Finding
    ca_file: str | None
    timeout: float
    config: Config
    token: AccessToken | None = None
    claims: diagnose.Claims | None = None
    claim_failures: list[Finding] = field(default_factory=list)
    logged_in: str | None = None

    def run(self, mailboxes: Sequence[tuple[int, MailboxSettings]]) -> None:
        here = _Where(self.tenant.name)
        started = time.monotonic()
        credential = check_credential(self.tenant, self.key)
        self.recorder.found("credential", credential.finding, started, here)
        if credential.finding.status == "pass":
            self._token(credential.secret_is_guid, here)
        else:
            self.recorder.skip("token", "credential", here)
        self._claims(here)
        imap_ok = self._network(here)
        for index, mailbox in mailboxes:
            self._mailbox(index, mailbox, imap_ok=imap_ok)

    def _token(self, secret_is_guid: bool, here: _Where) -> None:
        started = time.monotonic()
        try:
            token = bounded(lambda: self.client.acquire(self.tenant.name), self.timeout)
        except StepTimeout as exc:
            finding = Finding.failed(
                f"no token from {self.tenant.authority}: {exc}",
                cause="the identity platform did not answer in time",
                fix=f"check that this host reaches {self.tenant.authority_host} over HTTPS "
                "(DNS, proxy, firewall); on a slow link run check with a longer --timeout",
            )
        except MailsyncError as exc:
            # TokenRejected and TokenUnavailable, and also a SecretReadError: a federated token
            # file that vanished after the credential step is read inside MSAL, unmapped.
            finding = diagnose.diagnose_token_error(
                exc,
                tenant=self.tenant,
                key=self.key,
                ca_file=self.ca_file,
                secret_is_guid=secret_is_guid,
            )
        else:
            self.token = token
            self.claims = claims = diagnose.decode_claims(token.value)
            lifetime = (token.expires_at - token.obtained_at) / 60
            who = (
                f"appid {claims.appid}, oid {claims.oid}, tid {claims.tid}"
                if claims is not None
                else "not a readable JWT"
            )
            finding = Finding.passed(
                f"token from {self.tenant.authority} ({who}), lifetime {lifetime:.0f} min",
                appid=claims.appid if claims else None,
                oid=claims.oid if claims else None,
                tid=claims.tid if claims else None,
            )
        self.recorder.found("token", finding, started, here)

    def _claims(self, here: _Where) -> None:
        claims_steps = ("token.audience", "token.roles", "token.expiry")
        if self.token is None or self.claims is None:
            unreadable = "the token is not a JWT: its claims cannot be read"
            for step_id in claims_steps:
                detail = None if self.token is None else unreadable
                self.recorder.skip(step_id, "token", here, detail)
            return
        findings = (
            diagnose.check_audience(self.claims, self.tenant, self.key),
            diagnose.check_roles(self.claims, self.tenant),
            diagnose.check_expiry(self.claims, time.time()),
        )
        for step_id, finding in zip(claims_steps, findings, strict=True):
            self.recorder.found(step_id, finding, time.monotonic(), here)
        self.claim_failures = [f for f in findings if f.status == "fail"]

    def _network(self, here: _Where) -> bool:
        host, port = self.tenant.imap.host, self.tenant.imap.port
        checks: list[tuple[str, Callable[[], Finding]]] = [
            ("imap.dns", lambda: check_dns(host, port, self.key, self.timeout)),
            ("imap.tcp", lambda: check_tcp(host, port, self.key, self.timeout)),
            ("imap.tls", self._tls),
        ]
        failed: str | None = None
        for step_id, check in checks:
            if failed is not None:
                self.recorder.skip(step_id, failed, here)
                continue
            started = time.monotonic()
            if self.recorder.found(step_id, check(), started, here).status == "fail":
                failed = step_id
        return failed is None

    def _tls(self) -> Finding:
        if isinstance(self.context, Finding):
            return self.context
        imap = self.tenant.imap
        return check_tls(
            imap.host,
            imap.port,
            self.key,
            context=self.context,
            ca_file=self.ca_file,
            timeout=self.timeout,
        )

    def _mailbox(self, index: int, mailbox: MailboxSettings, *, imap_ok: bool) -> None:
        here = _Where(self.tenant.name, mailbox.address)
        token, context = self.token, self.context
        if token is None or not imap_ok or isinstance(context, Finding):
            self.recorder.skip("imap.login", "token" if token is None else "imap.tls", here)
            for folder in mailbox.folders:
                self.recorder.skip("imap.examine", "imap.login", here.at(folder))
            return
        started = time.monotonic()
        imap = self.tenant.imap
        session: ImapMailbox | None = None
        try:
            session = ImapMailbox.connect(imap.host, imap.port, context, self.timeout)
            session.login_xoauth2(mailbox.address, token.value)
        except ImapError as exc:
            if session is not None:
                session.logout()
            finding = diagnose.diagnose_login(
                exc,
                tenant=self.tenant,
                mailbox=mailbox.address,
                claims=self.claims,
                claim_failures=self.claim_failures,
                logged_in_before=self.logged_in,
            )
            self.recorder.found("imap.login", finding, started, here)
            for folder in mailbox.folders:
                self.recorder.skip("imap.examine", "imap.login", here.at(folder))
            return
        self.logged_in = self.logged_in or mailbox.address
        login = Finding.passed(f"XOAUTH2 login as {mailbox.address} accepted")
        self.recorder.found("imap.login", login, started, here)
        folders_key = (
            f"{self.config.mailbox_key_path(index)}.folders"
            if self.config.mailboxes[index].folders is not None
            else "defaults.folders"
        )
        try:
            self._examine(session, mailbox, folders_key, here)
        finally:
            session.logout()

    def _examine(
        self, session: ImapMailbox, mailbox: MailboxSettings, key: str, here: _Where
    ) -> None:
        lost: str | None = None
        for folder in mailbox.folders:
            if lost is not None:
                detail = f"not run: the session ended ({lost})"
                self.recorder.skip("imap.examine", "imap.examine", here.at(folder), detail)
                continue
            started = time.monotonic()
            try:
                found = session.examine(folder)
            except FolderMissing:
                try:
                    available = session.list_folders()
                except ImapError:
                    available = []
                finding = diagnose.folder_missing(folder, mailbox.address, available, key)
            except ImapError as exc:
                finding = diagnose.diagnose_session_error(exc, tenant=self.tenant, what="EXAMINE")
                lost = type(exc).__name__
            else:
                finding = Finding.passed(
                    f"EXAMINE {folder!r}: UIDVALIDITY {found.uidvalidity}, "
                    f"{found.exists} message(s)",
                    uidvalidity=found.uidvalidity,
                    messages=found.exists,
                )
            self.recorder.found("imap.examine", finding, started, here.at(folder))
