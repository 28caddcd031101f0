"""TLS front double: serves HTTPS on 127.0.0.1 and relays the decrypted bytes
to a plain-HTTP server on the loopback address, such as OpenBao or moto.

    python tls_front.py --backend 127.0.0.1:8200 --tls-cert CERT --tls-key KEY

It lets the tests reach those servers over HTTPS with a private CA, and through
a CONNECT proxy, without reconfiguring them.
"""

import argparse
import socketserver
import ssl
import sys

import relay


class FrontHandler(socketserver.BaseRequestHandler):
    def handle(self):
        try:
            client = self.server.context.wrap_socket(self.request, server_side=True)
        except (ssl.SSLError, OSError) as error:
            sys.stderr.write(f"TLS handshake failed: {error}\n")
            return
        try:
            upstream = relay.connect_loopback(self.server.backend_host, self.server.backend_port)
        except OSError as error:
            sys.stderr.write(f"backend unreachable: {error}\n")
            client.close()
            return
        with upstream, client:
            relay.pump(client, upstream)


class ThreadingServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default 0: the kernel picks one)")
    parser.add_argument("--backend", required=True, help="HOST:PORT of the plain-HTTP server, on the loopback address")
    parser.add_argument("--tls-cert", required=True, help="PEM certificate chain")
    parser.add_argument("--tls-key", required=True, help="PEM private key")
    args = parser.parse_args(argv)

    host, _, port = args.backend.rpartition(":")
    if not relay.is_loopback_target(host):
        parser.error("--backend must be a loopback address")
    server = ThreadingServer(("127.0.0.1", args.port), FrontHandler)
    server.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.context.load_cert_chain(args.tls_cert, args.tls_key)
    server.backend_host = host
    server.backend_port = int(port)
    print(f"listening on https://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())
