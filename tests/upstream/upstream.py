#!/usr/bin/env python3
"""An upstream service that is not ours and not Rust, for the proxy tests and
the README's "Watch a service in any language".

Usage: upstream.py [PORT] [--tls CERT KEY]   (default 0: any free port)

Binds 127.0.0.1:PORT and prints its port on the first line of stdout. With
--tls it serves HTTPS there (Python's ssl) and plain HTTP on a second port,
printed after the first on the same line, for GET /__events. It records
every connection and request, and notices when a client (the proxy) goes away
while a request is being worked on — saying so on stderr. GET /__events returns
all of it as JSON.

Routes:
  GET  /users/{id}?delay_ms=N   answer after N ms, watching the socket meanwhile
  GET  /stream?chunks=N&interval_ms=M   a chunked body, N lines M ms apart
  GET  /echo/{n}                "echo {n}\n" repeated n % 97 + 1 times
  POST /upload                  read the body (by length or chunked), answer its length
  GET  /reset                   close the connection with a RST
  GET  /hang                    never answer
  anything else                 404
"""

import json
import select
import socket
import ssl
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

LOCK = threading.Lock()
EVENTS = {"connections": 0, "requests": [], "cancelled": [], "bodies": []}


def record(kind, item):
    with LOCK:
        if kind == "connections":
            EVENTS["connections"] += 1
        else:
            EVENTS[kind].append(item)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def setup(self):
        if isinstance(self.request, ssl.SSLSocket):
            # The handshake here, on the connection's thread, not in accept().
            self.request.do_handshake()
        super().setup()
        # Headers and body go out in two writes; without TCP_NODELAY, Nagle and
        # the peer's delayed ACK would add 40 ms to every keep-alive response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        record("connections", None)

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass

    def send_text(self, status, text):
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def peer_gone(self, timeout):
        """Waits up to `timeout` s; True as soon as the peer has closed or reset."""
        ready, _, _ = select.select([self.connection], [], [], timeout)
        if not ready:
            return False
        if isinstance(self.connection, ssl.SSLSocket):
            # No peeking through TLS: while a request waits for its answer the
            # client sends nothing, so what arrives is its close_notify, FIN or
            # reset.
            self.connection.settimeout(0.05)
            try:
                return self.connection.recv(1) == b""
            except socket.timeout:
                return False
            except (OSError, ssl.SSLError):
                return True
            finally:
                self.connection.settimeout(None)
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def do_GET(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/__events":
            with LOCK:
                return self.send_text(200, json.dumps(EVENTS))
        record("requests", {
            "method": "GET", "path": self.path, "t": time.time(),
            "headers": {k.lower(): v for k, v in self.headers.items()},
        })
        if url.path.startswith("/users/"):
            deadline = time.time() + int(query.get("delay_ms", ["0"])[0]) / 1000
            while time.time() < deadline:
                if self.peer_gone(min(0.005, max(0.0, deadline - time.time()))):
                    record("cancelled", {"path": self.path, "t": time.time()})
                    sys.stderr.write("upstream: GET %s cancelled: the connection closed "
                                     "before the answer was ready\n" % self.path)
                    self.close_connection = True
                    return
            return self.send_text(200, "user %s\n" % url.path[len("/users/"):])
        if url.path == "/stream":
            chunks = int(query.get("chunks", ["10"])[0])
            interval = int(query.get("interval_ms", ["10"])[0]) / 1000
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for i in range(chunks):
                    line = ("chunk %d\n" % i).encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()
                    if self.peer_gone(interval):
                        raise ConnectionResetError
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                record("cancelled", {"path": self.path, "t": time.time()})
                sys.stderr.write("upstream: GET %s cancelled mid-stream\n" % self.path)
                self.close_connection = True
            return
        if url.path.startswith("/echo/"):
            n = url.path[len("/echo/"):]
            return self.send_text(200, ("echo %s\n" % n) * (int(n) % 97 + 1))
        if url.path == "/reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        if url.path == "/hang":
            time.sleep(3600)
            return
        return self.send_text(404, "not found\n")

    def read_body(self):
        """The request body and its framing: "chunked", "length" or "none"."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = b""
            while True:
                line = self.rfile.readline()
                if not line:
                    raise ConnectionResetError("the body ended mid-chunk")
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    # Trailers, up to the empty line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data, "chunked"
                data += self.rfile.read(size)
                self.rfile.readline()
        if "Content-Length" in self.headers:
            return self.rfile.read(int(self.headers["Content-Length"])), "length"
        return b"", "none"

    def do_POST(self):
        record("requests", {"method": "POST", "path": self.path, "t": time.time(), "headers": {}})
        try:
            data, framing = self.read_body()
        except (OSError, ValueError):
            self.close_connection = True
            return
        record("bodies", {"path": self.path, "length": len(data), "framing": framing})
        return self.send_text(200, "%d\n" % len(data))


def main():
    args = sys.argv[1:]
    tls = None
    if "--tls" in args:
        i = args.index("--tls")
        tls, args = args[i + 1:i + 3], args[:i] + args[i + 3:]
    try:
        port = int(args[0]) if args else 0
    except ValueError:
        sys.exit("usage: upstream.py [PORT] [--tls CERT KEY]")
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    if tls is None:
        print(server.server_address[1], flush=True)
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls[0], tls[1])
        context.set_alpn_protocols(["http/1.1"])
        server.socket = context.wrap_socket(server.socket, server_side=True,
                                             do_handshake_on_connect=False)
        events = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        events.daemon_threads = True
        threading.Thread(target=events.serve_forever, daemon=True).start()
        print(server.server_address[1], events.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
