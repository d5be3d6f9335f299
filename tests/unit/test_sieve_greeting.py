"""The ManageSieve greeting `check` reads (RFC 5804 section 1.7): capability lines, then OK."""

from __future__ import annotations

from mailmigrator.ops.check import sieve_capabilities


def test_a_dovecot_greeting_gives_its_capabilities() -> None:
    greeting = (b'"IMPLEMENTATION" "Dovecot Pigeonhole"\r\n"SIEVE" "fileinto reject envelope vacation"\r\n'
                b'"NOTIFY" "mailto"\r\n"SASL" "PLAIN"\r\n"STARTTLS"\r\n"VERSION" "1.0"\r\nOK "Dovecot ready."\r\n')
    capabilities = sieve_capabilities(greeting)
    assert capabilities is not None
    assert capabilities["SIEVE"] == "fileinto reject envelope vacation"
    assert "STARTTLS" in capabilities and capabilities["SASL"] == "PLAIN"


def test_anything_else_is_not_a_greeting() -> None:
    assert sieve_capabilities(b"* OK [CAPABILITY IMAP4rev1] ready\r\n") is None
    assert sieve_capabilities(b'"SIEVE" "fileinto"\r\n') is None  # cut before OK
    assert sieve_capabilities(b"") is None
