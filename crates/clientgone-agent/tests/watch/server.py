"""A plain Python HTTP/1.1 server for the watch tests: not ours, unchanged.

/users/<id>  fast 200
/slow        answers after 5 s
/upload      POST: reads the declared body, answers its length
/big         32 MiB with Content-Length, written in 64 KiB pieces
anything else: 200 "ok"
Arguments: [port [host]] (default: any free port on 127.0.0.1).
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


port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
server = http.server.ThreadingHTTPServer((host, port), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
