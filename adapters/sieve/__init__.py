"""Sieve scripts over ManageSieve (RFC 5804): the wire protocol, one connection, both servers."""
