"""Free loopback ports for the tests that start Ray clusters of their own (`ray start` processes)."""

from __future__ import annotations

import socket


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def free_ports_and_worker_range(count: int, width: int) -> tuple[list[int], int]:
    """`count` free ports and the first port of a worker range `width` wide that holds none of them
    (Ray refuses to start when a component's port falls inside the worker range)."""
    while True:
        *ports, min_worker = free_ports(count + 1)
        if not any(min_worker <= port <= min_worker + width for port in ports):
            return ports, min_worker
