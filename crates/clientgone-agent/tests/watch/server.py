"""A plain Python HTTP/1.1 server for the watch tests: not ours, unchanged.

/users/<id>  fast 200
/slow        answers after 5 s
/upload      POST: reads the declared body, answers its length
/big         32 MiB with Content-Length, written in 64 KiB pieces
anything else: 200 "ok"
Arguments: [--tls CERT KEY] [port [host]] (default: any free port on
127.0.0.1). With --tls it serves HTTPS through Python's ssl module (OpenSSL).
Prints its port on the first line of stdout.
"""
import http.server
import sys
import time


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, body, status=200):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(5)
            self.answer(b"slow\n")
        elif self.path.startswith("/big"):
            piece = b"x" * 65536
            self.send_response(200)
            self.send_header("Content-Length", str(512 * len(piece)))
            self.end_headers()
            try:
                for _ in range(512):
                    self.wfile.write(piece)
            except OSError:
                pass
        elif self.path.startswith("/users/"):
            self.answer(b"user\n")
        else:
            self.answer(b"ok\n")

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        got = self.rfile.read(n)
        self.answer(str(len(got)).encode())

    def log_message(self, *args):
        pass


args = sys.argv[1:]
tls = None
if args[:1] == ["--tls"]:
    tls, args = args[1:3], args[3:]
port = int(args[0]) if len(args) > 0 else 0
host = args[1] if len(args) > 1 else "127.0.0.1"
server = http.server.ThreadingHTTPServer((host, port), Handler)
# Clients that break off are what the tests are about: no traceback for each.
server.handle_error = lambda request, address: None
if tls:
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls[0], tls[1])
    # The handshake runs in the handler's thread, not in accept(): a client
    # that never finishes it holds only its own thread.
    server.socket = context.wrap_socket(
        server.socket, server_side=True, do_handshake_on_connect=False
    )
print(server.server_address[1], flush=True)
server.serve_forever()
