"""Shared plumbing for the HTTP test doubles.

Each double is a ThreadingHTTPServer bound to 127.0.0.1. The handler speaks
HTTP/1.1 with keep-alive and writes every reply (status line, headers and
body) in one write: a reply sent in two writes stalls keep-alive clients for
about 40 ms, because Nagle's algorithm delays the second write until the
client's delayed ACK arrives.
"""

import argparse
import json
import socket
import ssl
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Upper bound on request bodies; both doubles only take small JSON bodies.
MAX_BODY_BYTES = 1 << 20


class BodyError(Exception):
    """A request body that cannot be read, with the HTTP status to return."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


class DoubleHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "test-double"
    sys_version = ""

    def send_whole(self, status, body, content_type="application/json", headers=()):
        """Sends status, headers and body in one write."""
        if isinstance(body, str):
            body = body.encode()
        reason = HTTPStatus(status).phrase
        lines = [
            f"HTTP/1.1 {status} {reason}",
            f"Server: {self.server_version}",
            f"Date: {self.date_time_string()}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
        ]
        lines.extend(f"{name}: {value}" for name, value in headers)
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head + body)
        self.wfile.flush()
        self.log_request(status, len(body))

    def send_json(self, status, document, headers=()):
        self.send_whole(status, json.dumps(document), headers=headers)

    def read_body(self):
        """Reads the request body, with Content-Length or chunked encoding."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            return b""
        try:
            length = int(length_header)
        except ValueError:
            self.close_connection = True
            raise BodyError(400, f"invalid Content-Length {length_header!r}") from None
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            raise BodyError(413, f"request body of {length} bytes is too large")
        return self.rfile.read(length)

    def _read_chunked(self):
        chunks = []
        total = 0
        while True:
            size_line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                self.close_connection = True
                raise BodyError(400, "invalid chunk size") from None
            total += size
            if total > MAX_BODY_BYTES:
                self.close_connection = True
                raise BodyError(413, "request body is too large")
            if size == 0:
                # Skip trailer fields up to the blank line.
                while self.rfile.readline(1024).strip():
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def log_message(self, format, *args):  # noqa: A002 (name fixed by the base class)
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


# Loopback addresses a double may bind to; nothing else is ever served.
LOOPBACK_HOSTS = ("127.0.0.1", "::1")


def add_listen_arguments(parser: argparse.ArgumentParser):
    parser.add_argument(
        "--port",
        type=int,
        default=0,
        help="TCP port on the loopback address (default 0: the kernel picks a free port)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        choices=LOOPBACK_HOSTS,
        help="loopback address to bind to (default 127.0.0.1)",
    )
    parser.add_argument("--tls-cert", help="PEM certificate chain; serves HTTPS when set")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")


class ThreadingHTTPServerV6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def serve(handler_class, port, announce_name, configure=None, host="127.0.0.1", tls_cert=None, tls_key=None):
    """Binds to host:port, prints the URL on stdout, then serves forever.

    The first stdout line, `listening on http://127.0.0.1:PORT` (https and
    `[::1]` as configured), is the readiness signal: the socket already accepts
    connections when it is printed.
    """
    if host not in LOOPBACK_HOSTS:
        raise SystemExit(f"{announce_name}: refusing to bind to {host}; only loopback addresses are allowed")
    server_class = ThreadingHTTPServerV6 if ":" in host else ThreadingHTTPServer
    server = server_class((host, port), handler_class)
    server.daemon_threads = True
    if tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls_cert, tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        server.url_scheme = "https"
    if configure is not None:
        configure(server)
    scheme = getattr(server, "url_scheme", "http")
    bound_host, bound_port = server.server_address[:2]
    shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    print(f"listening on {scheme}://{shown_host}:{bound_port}", flush=True)
    sys.stderr.write(f"{announce_name}: listening on {scheme}://{shown_host}:{bound_port}\n")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
