"""The metrics contract of SPEC "Metrics": names, types, labels, zeros from the start."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from daemon.errors import REASONS
from daemon.http import render_text
from daemon.metrics import CHANGES, MAILBOX_STATES, OUTCOMES, Metrics

TENANTS = ("contoso", "fabrikam")

# name as exposed -> (type, label names), straight from the SPEC table.
SPEC_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mailsyncd_polls_total": ("counter", ("tenant", "outcome")),
    "mailsyncd_poll_failures_total": ("counter", ("tenant", "reason")),
    "mailsyncd_poll_duration_seconds": ("histogram", ("tenant",)),
    "mailsyncd_schedule_delay_seconds": ("histogram", ()),
    "mailsyncd_messages_synced_total": ("counter", ("tenant", "change")),
    "mailsyncd_sync_lag_seconds": ("histogram", ("tenant",)),
    "mailsyncd_token_requests_total": ("counter", ("tenant", "outcome")),
    "mailsyncd_token_expiry_timestamp_seconds": ("gauge", ("tenant",)),
    "mailsyncd_imap_logins_total": ("counter", ("tenant", "outcome")),
    # tenant: bounded by the configuration, so that alerts can name it (issue 14)
    "mailsyncd_mailboxes": ("gauge", ("tenant", "state")),
    "mailsyncd_oldest_successful_poll_timestamp_seconds": ("gauge", ("tenant",)),
    "mailsyncd_db_write_duration_seconds": ("histogram", ()),
    "mailsyncd_build_info": ("gauge", ("version",)),
    "mailsyncd_imap_sessions_open": ("gauge", ("tenant",)),
    "mailsyncd_mailboxes_owned": ("gauge", ("tenant",)),
    "mailsyncd_replicas": ("gauge", ()),
    "mailsyncd_config_last_reload_successful": ("gauge", ()),
    "mailsyncd_config_last_reload_success_timestamp_seconds": ("gauge", ()),
}
EXTRA_GAUGES = (
    "mailsyncd_polls_in_flight",
    "mailsyncd_mailboxes_configured",
    "mailsyncd_folders_missing",
)


@pytest.fixture
def make_metrics() -> Callable[..., tuple[Metrics, CollectorRegistry]]:
    """Returns a function building Metrics on a fresh registry."""

    def make(
        tenants: tuple[str, ...] = TENANTS, version: str = "1.2.3"
    ) -> tuple[Metrics, CollectorRegistry]:
        registry = CollectorRegistry()
        return Metrics(registry, tenants, version=version), registry

    return make


def _families(registry: CollectorRegistry) -> dict[str, prometheus_client.Metric]:
    """Metric families keyed by their exposed name (counters carry ``_total``)."""
    found = {}
    for family in registry.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        found[name] = family
    return found


def _series(registry: CollectorRegistry) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in registry.collect()
        for sample in family.samples
    }


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


@pytest.mark.parametrize(("name", "kind", "labels"), [(n, *v) for n, v in SPEC_METRICS.items()])
def test_spec_metric_is_registered_with_its_type_and_labels(
    make_metrics: Callable[..., tuple[Metrics, CollectorRegistry]],
    name: str,
    kind: str,
    labels: tuple[str, ...],
) -> None:
    _, registry = make_metrics()
    family = _families(registry)[name]

    assert family.type == kind
    assert family.samples, f"{name} has no series before the first event"
    for sample in family.samples:
        assert set(sample.labels) - {"le"} == set(labels)
    assert f"# TYPE {name} {kind}" in generate_latest(registry).decode()


def test_every_known_label_combination_starts_at_zero_for_each_tenant(
    make_metrics: Callable[..., tuple[Metrics, CollectorRegistry]],
) -> None:
    _, registry = make_metrics()

    for tenant in TENANTS:
        for outcome in OUTCOMES:
            for name in (
                "mailsyncd_polls_total",
                "mailsyncd_token_requests_total",
                "mailsyncd_imap_logins_total",
            ):
                assert _value(registry, name, tenant=tenant, outcome=outcome) == 0.0
        for reason in REASONS:
            assert (
                _value(registry, "mailsyncd_poll_failures_total", tenant=tenant, reason=reason)
                == 0.0
            )
        for change in CHANGES:
            assert (
                _value(registry, "mailsyncd_messages_synced_total", tenant=tenant, change=change)
                == 0.0
            )
        for histogram in ("mailsyncd_poll_duration_seconds", "mailsyncd_sync_lag_seconds"):
            assert _value(registry, f"{histogram}_count", tenant=tenant) == 0.0
            assert _value(registry, f"{histogram}_sum", tenant=tenant) == 0.0
        assert _value(registry, "mailsyncd_token_expiry_timestamp_seconds", tenant=tenant) == 0.0
        assert _value(registry, "mailsyncd_imap_sessions_open", tenant=tenant) == 0.0
        for state in MAILBOX_STATES:
            assert _value(registry, "mailsyncd_mailboxes", tenant=tenant, state=state) == 0.0
        assert (
            _value(registry, "mailsyncd_oldest_successful_poll_timestamp_seconds", tenant=tenant)
            == 0.0
        )
    assert _value(registry, "mailsyncd_schedule_delay_seconds_count") == 0.0
    assert _value(registry, "mailsyncd_db_write_duration_seconds_count") == 0.0
    assert _value(registry, "mailsyncd_build_info", version="1.2.3") == 1.0


def test_label_vocabularies_are_the_spec_ones() -> None:
    assert set(OUTCOMES) == {"success", "failure"}
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
    assert set(CHANGES) == {"new", "updated", "deleted"}
    assert set(MAILBOX_STATES) == {"ok", "backoff", "auth_failed", "disabled"}


def test_operator_extras_are_gauges_exported_from_the_start(
    make_metrics: Callable[..., tuple[Metrics, CollectorRegistry]],
) -> None:
    _, registry = make_metrics()
    families = _families(registry)

    for name in EXTRA_GAUGES:
        assert families[name].type == "gauge"
        assert families[name].samples
        assert all(sample.value == 0 for sample in families[name].samples)


@pytest.mark.parametrize(
    ("name", "lowest", "highest"),
    [
        ("mailsyncd_poll_duration_seconds", "0.01", "120.0"),
        ("mailsyncd_schedule_delay_seconds", "0.1", "3600.0"),
        ("mailsyncd_sync_lag_seconds", "0.1", "3600.0"),
    ],
)
def test_histogram_buckets_span_the_spec_range(
    make_metrics: Callable[..., tuple[Metrics, CollectorRegistry]],
    name: str,
    lowest: str,
    highest: str,
) -> None:
    _, registry = make_metrics()
    bounds = [
        sample.labels["le"]
        for sample in _families(registry)[name].samples
        if sample.name.endswith("_bucket")
    ]
    finite = [b for b in bounds if b != "+Inf"]

    assert min(finite, key=float) == lowest
    assert max(finite, key=float) == highest


def test_no_metric_has_a_mailbox_or_folder_label_and_there_is_no_mailbox_parameter(
    make_metrics: Callable[..., tuple[Metrics, CollectorRegistry]],
) -> None:
    _, registry = make_metrics()

    assert set(inspect.signature(Metrics).parameters) == {"registry", "tenants", "version"}
    for family in registry.collect():
        for sample in family.samples:
            assert not {"mailbox", "folder", "address", "user"} & set(sample.labels)


def test_poll_failure_reason_labels_are_exactly_the_error_reasons(
    make_metrics: Callable[..., tuple[Metrics, CollectorRegistry]],
) -> None:
    _, registry = make_metrics(tenants=("contoso",))

    family = _families(registry)["mailsyncd_poll_failures_total"]
    labels = [s.labels["reason"] for s in family.samples if s.name.endswith("_total")]

    assert sorted(labels) == sorted(REASONS)


def test_sessions_open_is_set_per_tenant_and_rejects_a_negative_count(
    make_metrics: Callable[..., tuple[Metrics, CollectorRegistry]],
) -> None:
    metrics, registry = make_metrics()

    metrics.set_sessions_open("contoso", 120)
    metrics.set_sessions_open("contoso", 95)
    metrics.set_sessions_open("fabrikam", 3)

    def sessions(tenant: str) -> float | None:
        return _value(registry, "mailsyncd_imap_sessions_open", tenant=tenant)

    assert (sessions("contoso"), sessions("fabrikam")) == (95.0, 3.0)
    with pytest.raises(ValueError, match="negative"):
        metrics.set_sessions_open("contoso", -1)
    assert sessions("contoso") == 95.0


def test_series_count_does_not_grow_with_the_number_of_mailboxes_polled(
    make_metrics: Callable[..., tuple[Metrics, CollectorRegistry]],
) -> None:
    metrics, registry = make_metrics()
    before = _series(registry)

    for mailbox in range(2000):  # as the scheduler would call it, once per mailbox poll
        tenant = TENANTS[mailbox % 2]
        with metrics.track_poll(tenant):
            metrics.poll_finished(tenant, "success", 0.05)
        metrics.poll_finished(tenant, "failure", 1.0, reason=REASONS[mailbox % 8])
        metrics.imap_login(tenant, ok=mailbox % 3 != 0)
        metrics.messages_synced(tenant, new=1, updated=2, deleted=3)
        metrics.observe_sync_lag(tenant, 4.0)
        metrics.schedule_delay(0.2)
        metrics.db_write(0.003)

    assert _series(registry) == before
    assert _value(registry, "mailsyncd_polls_total", tenant="contoso", outcome="success") == 1000


def test_two_instances_on_two_registries_do_not_collide_or_touch_the_global_registry(
    make_metrics: Callable[..., tuple[Metrics, CollectorRegistry]],
) -> None:
    first, first_registry = make_metrics()
    _, second_registry = make_metrics()

    first.token_request("contoso", ok=True)

    assert (
        _value(
            first_registry, "mailsyncd_token_requests_total", tenant="contoso", outcome="success"
        )
        == 1.0
    )
    assert (
        _value(
            second_registry, "mailsyncd_token_requests_total", tenant="contoso", outcome="success"
        )
        == 0.0
    )
    assert prometheus_client.REGISTRY.get_sample_value("mailsyncd_build_info", {}) is None
    assert not [
        family.name
        for family in prometheus_client.REGISTRY.collect()
        if family.name.startswith("mailsyncd_")
    ]


def test_failure_counts_its_reason_and_an_unknown_reason_counts_as_other(
    make_metrics: Callable[..., tuple[Metrics, CollectorRegistry]],
) -> None:
    metrics, registry = make_metrics()

    metrics.poll_finished("contoso", "failure", 2.0, reason="throttled")
    metrics.poll_finished("contoso", "failure", 2.0, reason="cosmic-rays")
    metrics.poll_finished("contoso", "failure", 2.0)
    metrics.poll_finished("contoso", "success", 0.5, reason="ignored")

    def failures(reason: str) -> float | None:
        return _value(registry, "mailsyncd_poll_failures_total", tenant="contoso", reason=reason)

    assert failures("throttled") == 1.0
    assert failures("other") == 2.0
    assert _value(registry, "mailsyncd_polls_total", tenant="contoso", outcome="failure") == 3.0
    assert _value(registry, "mailsyncd_poll_duration_seconds_count", tenant="contoso") == 4.0
    assert _value(registry, "mailsyncd_poll_duration_seconds_sum", tenant="contoso") == 6.5


def test_unknown_outcome_is_rejected(
    make_metrics: Callable[..., tuple[Metrics, CollectorRegistry]],
) -> None:
    metrics, _ = make_metrics()

    with pytest.raises(ValueError, match="outcome"):
        metrics.poll_finished("contoso", "partial", 1.0)  # type: ignore[arg-type]


def test_messages_synced_counts_each_change_kind(
    make_metrics: Callable[..., tuple[Metrics, CollectorRegistry]],
) -> None:
    metrics, registry = make_metrics()

    metrics.messages_synced("fabrikam", new=5, updated=0, deleted=2)

    def synced(change: str) -> float | None:
        return _value(registry, "mailsyncd_messages_synced_total", tenant="fabrikam", change=change)

    assert (synced("new"), synced("updated"), synced("deleted")) == (5.0, 0.0, 2.0)
    with pytest.raises(ValueError, match="negative"):
        metrics.messages_synced("fabrikam", new=-1, updated=0, deleted=0)


def test_mailbox_states_are_set_per_tenant_together_and_an_absent_pair_returns_to_zero(
    make_metrics: Callable[..., tuple[Metrics, CollectorRegistry]],
) -> None:
    metrics, registry = make_metrics()

    metrics.set_mailbox_states({("contoso", "ok"): 9, ("fabrikam", "backoff"): 1})
    metrics.set_mailbox_states({("contoso", "ok"): 7, ("contoso", "auth_failed"): 3})

    def states(tenant: str) -> dict[str, float | None]:
        return {
            s: _value(registry, "mailsyncd_mailboxes", tenant=tenant, state=s)
            for s in MAILBOX_STATES
        }

    assert states("contoso") == {"ok": 7.0, "backoff": 0.0, "auth_failed": 3.0, "disabled": 0.0}
    assert states("fabrikam") == {"ok": 0.0, "backoff": 0.0, "auth_failed": 0.0, "disabled": 0.0}
    with pytest.raises(ValueError, match="unknown mailbox states"):
        metrics.set_mailbox_states({("contoso", "sleeping"): 1})


def test_oldest_success_is_per_tenant_and_a_tenant_without_mailboxes_returns_to_zero(
    make_metrics: Callable[..., tuple[Metrics, CollectorRegistry]],
) -> None:
    metrics, registry = make_metrics()

    def oldest(tenant: str) -> float | None:
        return _value(registry, "mailsyncd_oldest_successful_poll_timestamp_seconds", tenant=tenant)

    metrics.set_oldest_success({"contoso": 1_600_000_000.0, "fabrikam": 1_700_000_000.0})
    assert (oldest("contoso"), oldest("fabrikam")) == (1.6e9, 1.7e9)
    metrics.set_oldest_success({"fabrikam": 1_700_000_100.0})
    assert (oldest("contoso"), oldest("fabrikam")) == (0.0, 1_700_000_100.0)


def test_the_platform_collector_is_registered_and_no_created_series_is_served(
    make_metrics: Callable[..., tuple[Metrics, CollectorRegistry]],
) -> None:
    metrics, registry = make_metrics()
    metrics.poll_finished("contoso", "success", 0.1)

    assert _value(registry, "python_info", **_python_info_labels(registry)) == 1.0
    text = render_text(registry).decode()
    assert "mailsyncd_polls_total{" in text
    assert "_created" not in text


def _python_info_labels(registry: CollectorRegistry) -> dict[str, str]:
    [family] = [f for f in registry.collect() if f.name == "python_info"]
    return dict(family.samples[0].labels)


def test_negative_durations_from_clock_skew_are_recorded_as_zero(
    make_metrics: Callable[..., tuple[Metrics, CollectorRegistry]],
) -> None:
    metrics, registry = make_metrics()

    metrics.schedule_delay(-0.5)
    metrics.observe_sync_lag("contoso", -30.0)

    assert _value(registry, "mailsyncd_schedule_delay_seconds_sum") == 0.0
    assert _value(registry, "mailsyncd_schedule_delay_seconds_count") == 1.0
    assert _value(registry, "mailsyncd_sync_lag_seconds_sum", tenant="contoso") == 0.0


def test_track_poll_counts_in_flight_and_releases_on_error(
    make_metrics: Callable[..., tuple[Metrics, CollectorRegistry]],
) -> None:
    metrics, registry = make_metrics()

    with metrics.track_poll("contoso"):
        assert _value(registry, "mailsyncd_polls_in_flight", tenant="contoso") == 1.0
    with pytest.raises(RuntimeError), metrics.track_poll("contoso"):
        raise RuntimeError("poll failed")

    assert _value(registry, "mailsyncd_polls_in_flight", tenant="contoso") == 0.0


def test_gauges_record_what_they_are_given(
    make_metrics: Callable[..., tuple[Metrics, CollectorRegistry]],
) -> None:
    metrics, registry = make_metrics()

    metrics.token_expiry("contoso", 1_700_000_000.0)
    metrics.set_folders_missing(2)
    metrics.set_mailboxes_configured({"contoso": 10})

    assert (
        _value(registry, "mailsyncd_token_expiry_timestamp_seconds", tenant="contoso")
        == 1_700_000_000.0
    )
    assert _value(registry, "mailsyncd_folders_missing") == 2.0
    assert _value(registry, "mailsyncd_mailboxes_configured", tenant="contoso") == 10.0
    assert _value(registry, "mailsyncd_mailboxes_configured", tenant="fabrikam") == 0.0


def test_config_loaded_is_gone_in_favour_of_the_reload_gauges(
    make_metrics: Callable[..., tuple[Metrics, CollectorRegistry]],
) -> None:
    metrics, registry = make_metrics()

    assert "mailsyncd_config_loaded" not in _families(registry)
    assert not hasattr(metrics, "set_config_loaded")


def test_a_tenant_added_by_a_reload_is_exported_at_zero_like_the_others(
    make_metrics: Callable[..., tuple[Metrics, CollectorRegistry]],
) -> None:
    metrics, registry = make_metrics()
    metrics.add_tenant("tailspin")
    metrics.add_tenant("tailspin")  # idempotent
    assert metrics.tenants.count("tailspin") == 1
    for reason in REASONS:
        assert (
            _value(registry, "mailsyncd_poll_failures_total", tenant="tailspin", reason=reason) == 0
        )
    assert _value(registry, "mailsyncd_imap_sessions_open", tenant="tailspin") == 0
    assert _value(registry, "mailsyncd_mailboxes", tenant="tailspin", state="ok") == 0
    assert (
        _value(registry, "mailsyncd_oldest_successful_poll_timestamp_seconds", tenant="tailspin")
        == 0
    )


def test_a_rejected_reload_sets_the_gauge_to_0_and_keeps_the_last_success_time(
    make_metrics: Callable[..., tuple[Metrics, CollectorRegistry]],
) -> None:
    metrics, registry = make_metrics()
    metrics.config_reloaded(True, 1000.0)
    metrics.config_reloaded(False, 2000.0)
    assert _value(registry, "mailsyncd_config_last_reload_successful") == 0
    assert _value(registry, "mailsyncd_config_last_reload_success_timestamp_seconds") == 1000.0
    metrics.config_reloaded(True, 3000.0)
    assert _value(registry, "mailsyncd_config_last_reload_successful") == 1
