"""A free TCP port, for a process group's rendezvous."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on at `host` now ("" for every interface of this node)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
