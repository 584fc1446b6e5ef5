"""An HTTP/2 client over TLS for the HTTPS tests: Python's `ssl` and the `h2`
library (hyper-h2), neither of them ours. Verifies the server against CAFILE.

  h2_tls_client.py HOST PORT CAFILE SLOW_PATH FAST_PATH
      (CAFILE "-": the server's certificate is not verified.)
      Negotiates h2 by ALPN and GETs SLOW_PATH on stream 1; prints "sent" and
      waits for a line on stdin. Then resets stream 1 (RST_STREAM, CANCEL),
      GETs FAST_PATH on stream 3 over the same connection, prints its status,
      and closes the connection (GOAWAY, then FIN, reading what the server
      sends until it closes too).
"""
import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.errors
import h2.events

host, port, cafile, slow, fast = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
if cafile == "-":
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
else:
    context = ssl.create_default_context(cafile=cafile)
context.set_alpn_protocols(["h2"])
sock = context.wrap_socket(socket.create_connection((host, port)), server_hostname="localhost")
assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
conn.initiate_connection()


def get(stream, path):
    conn.send_headers(stream, [(":method", "GET"), (":path", path), (":scheme", "https"),
                               (":authority", "localhost")], end_stream=True)
    sock.sendall(conn.data_to_send())


get(1, slow)
print("sent", flush=True)
sys.stdin.readline()
conn.reset_stream(1, error_code=h2.errors.ErrorCodes.CANCEL)
get(3, fast)
status = None
while True:
    data = sock.recv(65536)
    if not data:
        raise SystemExit("the server closed the connection")
    for event in conn.receive_data(data):
        if isinstance(event, h2.events.ResponseReceived) and event.stream_id == 3:
            status = dict(event.headers)[b":status"].decode()
        elif isinstance(event, h2.events.DataReceived):
            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded) and event.stream_id == 3:
            print(status, flush=True)
            conn.close_connection()
            sock.sendall(conn.data_to_send())
            # A FIN, then what the server still sends (its GOAWAY) read to
            # its end: a close with unread bytes would be an RST.
            socket.socket.shutdown(sock, socket.SHUT_WR)
            try:
                while sock.recv(65536):
                    pass
            except (OSError, ssl.SSLError):
                pass
            sock.close()
            sys.exit(0)
    sock.sendall(conn.data_to_send())
