"""Ports chosen for servers lie outside the kernel's ephemeral range, so that no outgoing connection can take one
between the choice and the server's bind (a `whaleid up` in CI once failed so: the matcher's /metrics port was
held by a client socket)."""

from __future__ import annotations

import socket

from services.devtools.stack.ports import LOOPBACK, ephemeral_range, free_block, free_ports


def test_ports_avoid_the_ephemeral_range_and_never_repeat():
    low, high = ephemeral_range()
    ports = free_ports(40)
    assert len(set(ports)) == 40
    assert not [p for p in ports if low <= p <= high]
    assert not set(ports) & set(free_ports(40))


def test_a_block_is_consecutive_bindable_and_outside_the_range():
    low, high = ephemeral_range()
    base = free_block(6)
    assert not [p for p in range(base, base + 6) if low <= p <= high]
    for port in range(base, base + 6):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, port))


def test_a_port_held_by_another_socket_is_skipped(monkeypatch):
    from services.devtools.stack import ports

    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    candidates = [p for p in ports.candidate_ports() if p not in ports._handed_out]
    for port in candidates:
        try:
            held.bind((LOOPBACK, port))
            break
        except OSError:
            continue
    try:
        taken = held.getsockname()[1]
        picks = iter([taken, taken, *candidates[::-1]])
        monkeypatch.setattr(ports._random, "choice", lambda _seq: next(picks))
        chosen = free_block(1)
        assert chosen != taken and chosen in candidates
    finally:
        held.close()
