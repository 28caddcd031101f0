"""HTTP CONNECT proxy double that records the targets it tunnels to.

    python connect_proxy.py [--port 0]

Clients that honour HTTPS_PROXY open a tunnel with `CONNECT host:port` and
speak TLS through it. The proxy tunnels only to loopback targets (127.0.0.1,
::1, localhost) and returns 403 for any other, so a test that forgot to point a
client at a double fails instead of reaching the internet. Plain-HTTP proxying
(absolute-form requests) is not supported and returns 501.
`GET /_double/targets`, sent to the proxy directly, returns every CONNECT
target in order, refused ones included.
"""

import argparse
import json
import socketserver
import sys
import threading

import relay

MAX_HEAD_BYTES = 16384


class ProxyHandler(socketserver.BaseRequestHandler):
    def read_head(self):
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.request.recv(4096)
            if not chunk:
                return None
            head += chunk
            if len(head) > MAX_HEAD_BYTES:
                return None
        return head.split(b"\r\n\r\n", 1)[0].decode("latin-1")

    def reply(self, status, reason, body=b"", content_type="text/plain"):
        head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        self.request.sendall(head.encode("latin-1") + body)

    def handle(self):
        head = self.read_head()
        if head is None:
            return
        request_line = head.split("\r\n", 1)[0]
        parts = request_line.split(" ")
        if len(parts) != 3:
            self.reply(400, "Bad Request")
            return
        method, target, _ = parts

        if method == "GET" and target == "/_double/targets":
            body = json.dumps(self.server.targets()).encode()
            self.reply(200, "OK", body, "application/json")
            return
        if method != "CONNECT":
            self.reply(501, "Not Implemented", b"only CONNECT is supported\n")
            return

        host, _, port_text = target.rpartition(":")
        self.server.record(target)
        sys.stderr.write(f"CONNECT {target}\n")
        if not port_text.isdigit() or not relay.is_loopback_target(host):
            self.reply(403, "Forbidden", b"only loopback targets are allowed\n")
            return
        try:
            upstream = relay.connect_loopback(host, int(port_text))
        except OSError as error:
            self.reply(502, "Bad Gateway", f"{error}\n".encode())
            return
        with upstream:
            self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            relay.pump(self.request, upstream)


class ThreadingServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default 0: the kernel picks one)")
    args = parser.parse_args(argv)

    lock = threading.Lock()
    targets = []
    server = ThreadingServer(("127.0.0.1", args.port), ProxyHandler)

    def record(target):
        with lock:
            targets.append(target)

    def snapshot():
        with lock:
            return list(targets)

    server.record = record
    server.targets = snapshot
    port = server.server_address[1]
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())
