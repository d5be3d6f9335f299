"""How many client connections the proxy holds: a global cap and one per client address.

Admission is counted, not timed: a slot is taken when a connection is
accepted and given back when it ends, whatever ended it. Refusals are counted
too and reported as one summary line per interval, so a flood of refused
connections cannot become a flood of log lines.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

Refusal = Literal["too many connections", "too many connections from this address"]


def client_key(address: str) -> str:
    """Whom a connection counts against: the IPv4 address, or the IPv6 /64 (one site, like one NAT address)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass
class ConnectionSlots:
    """Counts open connections; `take` refuses beyond `max_total` or `max_per_address` (per `client_key`)."""

    max_total: int
    max_per_address: int
    total: int = 0
    per_address: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)

    def take(self, address: str) -> Refusal | None:
        """Take a slot for a connection from `address`, or say why not (and count the refusal)."""
        address = client_key(address)
        refusal: Refusal | None = None
        if self.total >= self.max_total:
            refusal = "too many connections"
        elif self.per_address[address] >= self.max_per_address:
            refusal = "too many connections from this address"
        if refusal is not None:
            self.refused[address] += 1
            return refusal
        self.total += 1
        self.per_address[address] += 1
        return None

    def give_back(self, address: str) -> None:
        address = client_key(address)
        self.total -= 1
        self.per_address[address] -= 1
        if not self.per_address[address]:
            del self.per_address[address]

    def take_refusals(self, top: int = 5) -> tuple[int, list[tuple[str, int]]]:
        """Refusals since the last call: how many, and the addresses refused most."""
        count, busiest = self.refused.total(), self.refused.most_common(top)
        self.refused = Counter()
        return count, busiest
