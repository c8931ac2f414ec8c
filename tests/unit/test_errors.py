"""The error tree of daemon.errors: one root, two branches, a reason for every class."""

from __future__ import annotations

import inspect
import typing

import pytest

import daemon.config
from daemon import errors
from daemon.errors import (
    REASONS,
    FolderMissing,
    ImapError,
    MailboxAccessDenied,
    MailsyncError,
    PermanentError,
    Reason,
    SecretReadError,
    Throttled,
    TlsVerifyError,
    TokenRejected,
    TokenUnavailable,
    TransientError,
    UnknownFolder,
    error_fields,
    reason_of,
)

CLASSES = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, MailsyncError) and cls.__module__ == errors.__name__
]
ABSTRACT = {MailsyncError, TransientError, PermanentError, ImapError}
CONCRETE = [cls for cls in CLASSES if cls not in ABSTRACT]


def test_reasons_are_the_spec_label_values_in_spec_order() -> None:
    assert typing.get_args(Reason) == REASONS
    assert REASONS == (
        "token",
        "auth",
        "connect",
        "timeout",
        "throttled",
        "protocol",
        "database",
        "other",
    )


@pytest.mark.parametrize("cls", CONCRETE, ids=lambda cls: cls.__name__)
def test_every_error_is_on_exactly_one_branch_with_a_known_reason(
    cls: type[MailsyncError],
) -> None:
    assert issubclass(cls, TransientError) != issubclass(cls, PermanentError)
    assert cls.reason in REASONS


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_class_is_drawn_in_the_module_docstring(cls: type[MailsyncError]) -> None:
    assert errors.__doc__ is not None
    assert f" {cls.__name__} " in errors.__doc__ or f"``{cls.__name__}``" in errors.__doc__


def test_root_carries_hint_and_retry_after_and_falls_back_to_the_class_hint() -> None:
    plain = MailsyncError("boom")
    assert (str(plain), plain.reason, plain.hint, plain.retry_after) == (
        "boom",
        "other",
        None,
        None,
    )

    given = TransientError("busy", hint="wait", retry_after=2.5)
    assert (given.hint, given.retry_after) == ("wait", 2.5)

    assert TlsVerifyError("bad cert").hint == TlsVerifyError.default_hint
    assert TlsVerifyError("bad cert", hint="set tls.ca_file").hint == "set tls.ca_file"
    assert MailboxAccessDenied("no rights").hint is not None
    assert "Add-MailboxPermission" in (MailboxAccessDenied("no rights").hint or "")


def test_subclasses_keep_their_keyword_arguments() -> None:
    missing = FolderMissing("EXAMINE failed", folder="Archive")
    assert (missing.folder, missing.reason, missing.hint) == ("Archive", "protocol", None)

    throttled = Throttled("slow down", retry_after=4.5)
    assert (throttled.retry_after, throttled.reason) == (4.5, "throttled")
    assert isinstance(throttled, ImapError)

    rejected = TokenRejected("refused", code=7000215, hint="use the secret's Value")
    assert (rejected.code, rejected.hint, rejected.reason) == (
        7000215,
        "use the secret's Value",
        "token",
    )
    assert isinstance(rejected, PermanentError)
    assert TokenRejected("refused").code is None

    unavailable = TokenUnavailable("503", hint="TLS", retry_after=30.0)
    assert (unavailable.hint, unavailable.retry_after, unavailable.reason) == ("TLS", 30.0, "token")
    assert isinstance(unavailable, TransientError)


def test_secret_read_error_is_permanent_and_still_importable_from_config() -> None:
    error = SecretReadError("client_secret_file", "cannot read the file: Permission denied")

    assert daemon.config.SecretReadError is SecretReadError
    assert str(error) == "client_secret_file: cannot read the file: Permission denied"
    assert (error.key, error.reason) == ("client_secret_file", "token")
    assert isinstance(error, PermanentError)


def test_unknown_folder_names_the_id_and_is_a_permanent_database_error() -> None:
    error = UnknownFolder(42)

    assert error.folder_id == 42
    assert "folder 42" in str(error)
    assert error.reason == "database"
    assert isinstance(error, PermanentError)


def test_error_fields_of_a_mailsync_error_carry_reason_and_hint() -> None:
    fields = error_fields(MailboxAccessDenied("IMAP login: token accepted, mailbox refused"))

    assert fields == {
        "reason": "auth",
        "error": "IMAP login: token accepted, mailbox refused",
        "error_type": "MailboxAccessDenied",
        "hint": MailboxAccessDenied.default_hint,
    }


def test_error_fields_leave_out_an_unknown_hint() -> None:
    assert error_fields(FolderMissing("gone", folder="Old")) == {
        "reason": "protocol",
        "error": "gone",
        "error_type": "FolderMissing",
    }


def test_error_fields_of_a_foreign_exception_say_other_and_name_its_type() -> None:
    assert error_fields(KeyError()) == {
        "reason": "other",
        "error": "KeyError",
        "error_type": "KeyError",
    }
    assert error_fields(RuntimeError("bug")) == {
        "reason": "other",
        "error": "bug",
        "error_type": "RuntimeError",
    }


def test_reason_of_reads_the_class_reason_or_other() -> None:
    assert reason_of(Throttled("x")) == "throttled"
    assert reason_of(UnknownFolder(1)) == "database"
    assert reason_of(ValueError("x")) == "other"
