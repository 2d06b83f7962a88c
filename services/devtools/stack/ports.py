"""Free TCP ports on the loopback interface, for servers and services that bind them a while later.

A port is chosen outside the kernel's ephemeral range (`net.ipv4.ip_local_port_range`): a port the kernel hands
out with `bind(0)` is one it may give to any outgoing connection (a Kafka client, a health probe) between the
choice and the server's own bind, which then fails with "Address already in use". Ports outside that range are
only ever taken by an explicit bind. A port handed out once is not handed out again by this process.
"""

from __future__ import annotations

import random
import socket
import threading
from contextlib import ExitStack
from pathlib import Path

LOOPBACK = "127.0.0.1"
LOWEST = 15000  # below: well-known defaults (8080, 9092, 9400...) that a user's own servers may hold
HIGHEST = 65535
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_EPHEMERAL = (32768, 60999)  # Linux's default; BSD and macOS use 49152-65535

_handed_out: set[int] = set()
_lock = threading.Lock()
_random = random.SystemRandom()


def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(v) for v in EPHEMERAL_RANGE.read_text().split())
        return low, high
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL


def candidate_ports() -> list[int]:
    """Ports that no outgoing connection takes: between LOWEST and the ephemeral range, and above it."""
    low, high = ephemeral_range()
    ports = [*range(LOWEST, max(LOWEST, low)), *range(max(LOWEST, high + 1), HIGHEST + 1)]
    if len(ports) < 1000:
        raise OSError(f"too few ports outside the ephemeral range {low}-{high} to choose from")
    return ports


def _bindable(stack: ExitStack, port: int) -> bool:
    """Holds `port` bound in `stack` if nothing holds it (no SO_REUSEADDR: a TIME_WAIT on it also counts)."""
    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    try:
        sock.bind((LOOPBACK, port))
    except OSError:
        return False
    return True


def free_block(count: int, attempts: int = 200) -> int:
    """The first of `count` consecutive ports, all free a moment ago and none handed out before."""
    candidates = candidate_ports()
    usable = set(candidates)
    with _lock:
        for _ in range(attempts):
            base = _random.choice(candidates)
            block = range(base, base + count)
            if any(p not in usable or p in _handed_out for p in block):
                continue
            with ExitStack() as stack:
                if all(_bindable(stack, p) for p in block):
                    _handed_out.update(block)
                    return base
    raise OSError(f"no block of {count} free ports on {LOOPBACK} after {attempts} tries")


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that were free a moment ago (never equal, never handed out before)."""
    return [free_block(1) for _ in range(count)]


def free_port() -> int:
    return free_block(1)


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0
