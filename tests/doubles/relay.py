"""Byte relays for the proxy and TLS front doubles."""

import select
import socket

# A relay whose sockets stay silent this long is closed.
IDLE_TIMEOUT_SECONDS = 60
CONNECT_TIMEOUT_SECONDS = 5
BUFFER_BYTES = 65536
# Targets the doubles may connect to; anything else is refused, so no test can
# send traffic off the machine through them.
LOOPBACK_TARGETS = ("127.0.0.1", "::1", "localhost")


def is_loopback_target(host):
    return host.strip("[]") in LOOPBACK_TARGETS


def connect_loopback(host, port):
    """Opens a TCP connection to a loopback target; raises ValueError for any other."""
    host = host.strip("[]")
    if not is_loopback_target(host):
        raise ValueError(f"refusing to connect to {host}: only loopback targets are allowed")
    address = "127.0.0.1" if host == "localhost" else host
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    upstream = socket.socket(family, socket.SOCK_STREAM)
    upstream.settimeout(CONNECT_TIMEOUT_SECONDS)
    upstream.connect((address, port))
    upstream.settimeout(None)
    return upstream


def pump(first, second):
    """Copies bytes both ways until a side closes or both stay idle too long."""
    sockets = [first, second]
    while True:
        readable, _, broken = select.select(sockets, [], sockets, IDLE_TIMEOUT_SECONDS)
        if broken or not readable:
            return
        for source in readable:
            try:
                data = source.recv(BUFFER_BYTES)
            except (OSError, ValueError):
                return
            if not data:
                return
            target = second if source is first else first
            try:
                target.sendall(data)
            except OSError:
                return
