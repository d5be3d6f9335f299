"""Counting connections against the global and per-address caps (no sockets)."""

from __future__ import annotations

from mailmigrator.adapters.proxy.connection_slots import ConnectionSlots, client_key


def test_per_address_and_global_caps_refuse_and_a_slot_given_back_is_free_again() -> None:
    slots = ConnectionSlots(max_total=4, max_per_address=2)
    assert [slots.take("192.0.2.1") for _ in range(3)] == [None, None, "too many connections from this address"]
    assert [slots.take("192.0.2.2") for _ in range(2)] == [None, None]
    assert slots.take("192.0.2.3") == "too many connections"
    slots.give_back("192.0.2.1")
    assert slots.take("192.0.2.3") is None
    assert slots.take_refusals() == (2, [("192.0.2.1", 1), ("192.0.2.3", 1)])
    assert slots.take_refusals() == (0, [])


def test_ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() -> None:
    assert client_key("2001:db8:1:2::5") == client_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::5") != client_key("2001:db8:1:2::5")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("not an address") == "not an address"
    slots = ConnectionSlots(max_total=10, max_per_address=1)
    assert slots.take("2001:db8::1") is None
    assert slots.take("2001:db8::2") == "too many connections from this address"
    slots.give_back("2001:db8::1")
    assert slots.per_address == {}
