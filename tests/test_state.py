"""The Store's identity rules: a CA whose state did not change keeps its object."""

from __future__ import annotations

from dataclasses import replace

from pki_exporter.state import CAState, Store
from tests.metrics_data import NOW, snapshot

A = "11111111-1111-4111-8111-111111111111"
B = "22222222-2222-4222-8222-222222222222"
C = "33333333-3333-4333-8333-333333333333"


def store_with_two() -> Store:
    store = Store(["contoso"])
    store.set_cas("contoso", {A: "Root", B: "Issuing"})
    store.record_success("contoso", A, "Root", snapshot(A), 1.5)
    store.record_failure("contoso", B, "timeout", "timed out", NOW - 30, 0.25)
    return store


def test_the_same_ca_list_keeps_the_states_and_the_mapping() -> None:
    store = store_with_two()
    tenant = store.tenants["contoso"]
    store.set_cas("contoso", {A: "Root", B: "Issuing"})
    after = store.tenants["contoso"]
    assert after is tenant  # nothing changed: nothing swapped
    assert after.cas is tenant.cas
    assert after.cas[A] is tenant.cas[A]
    assert after.cas[B] is tenant.cas[B]


def test_a_new_label_replaces_that_state_only() -> None:
    store = store_with_two()
    before = store.tenants["contoso"].cas
    store.set_cas("contoso", {A: "Root CA", B: "Issuing"})
    after = store.tenants["contoso"].cas
    assert after is not before
    assert after[B] is before[B]
    assert after[A] is not before[A]
    assert after[A] == replace(before[A], label="Root CA")


def test_new_and_gone_cas() -> None:
    store = store_with_two()
    before = store.tenants["contoso"].cas
    store.set_cas("contoso", {B: "Issuing", C: "New"})
    after = store.tenants["contoso"].cas
    assert list(after) == [B, C]
    assert after[B] is before[B]
    assert after[C] == CAState(C, "New")


def test_a_new_order_is_a_new_mapping_of_the_same_states() -> None:
    store = store_with_two()
    before = store.tenants["contoso"].cas
    store.set_cas("contoso", {B: "Issuing", A: "Root"})
    after = store.tenants["contoso"].cas
    assert list(after) == [B, A]
    assert after[A] is before[A]
    assert after[B] is before[B]


def test_counters_and_status_leave_the_ca_mapping_alone() -> None:
    store = store_with_two()
    cas = store.tenants["contoso"].cas
    store.count_request("contoso", 200)
    store.count_budget_wait("contoso", 0.5)
    store.set_tenant("contoso", up=False, error="boom")
    store.finish_cycle("contoso")
    assert store.tenants["contoso"].cas is cas


def test_a_refresh_of_one_ca_keeps_every_other_ca_object() -> None:
    """The collector's per-CA caches hold while ``hit[0] is ca``: a refresh of A (success
    or failure) must leave B's state the same object, and a change of another tenant must
    leave this tenant's states the same objects."""
    store = Store(["contoso", "fabrikam"])
    store.set_cas("contoso", {A: "Root", B: "Issuing"})
    store.set_cas("fabrikam", {C: "Other"})
    store.record_success("contoso", B, "Issuing", snapshot(B), 0.5)
    b = store.tenants["contoso"].cas[B]
    other = store.tenants["fabrikam"].cas[C]

    store.record_success("contoso", A, "Root", snapshot(A), 1.5)
    assert store.tenants["contoso"].cas[B] is b
    store.record_failure("contoso", A, "timeout", "timed out", NOW - 30, 0.25)
    assert store.tenants["contoso"].cas[B] is b
    assert store.tenants["fabrikam"].cas[C] is other

    contoso = store.tenants["contoso"]
    store.record_failure("fabrikam", C, "auth", "denied", NOW - 10, 0.1)
    store.set_tenant("fabrikam", up=False, error="denied")
    assert store.tenants["contoso"] is contoso
    assert store.tenants["fabrikam"].cas[C] is not other

    store.reconfigure(["contoso"])
    assert store.tenants["contoso"] is contoso
    assert list(store.tenants) == ["contoso"]
