"""A TLS client for the tests (watch, HTTPS): Python's ssl module (OpenSSL), not ours.
The server's certificate is not verified (the tests make their own).

  tls_client.py HOST PORT requests PATH...
      One keep-alive connection, a GET per path; prints each status on a line,
      then closes (FIN).
  tls_client.py HOST PORT hold REQUEST
      Sends REQUEST (backslash escapes such as \\r\\n are decoded), prints
      "sent", then waits for a line on stdin: "fin" closes the connection,
      "rst" resets it (SO_LINGER 0).
  tls_client.py HOST PORT big PATH
      GETs PATH, reads the head and some of the body, prints "reading", then
      waits for a line on stdin and closes as `hold` does.
  tls_client.py HOST PORT hello-cut
      Sends the first half of a real ClientHello over plain TCP, prints "sent",
      waits for a line on stdin and closes as `hold` does.
  tls_client.py HOST PORT h2
      Negotiates HTTP/2 by ALPN, sends the connection preface and an empty
      SETTINGS frame, reads the server's first frame, prints "h2", closes.
  tls_client.py HOST PORT session
      Verifies the server against the CA file in $CLIENT_CA, prints
      "cn=<the common name of its certificate>", then GETs each path read
      from stdin on the same keep-alive connection, printing each status;
      closes at the end of stdin.
"""
import os
import socket
import ssl
import struct
import sys

host, port, mode, args = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname = False
if os.environ.get("CLIENT_CA"):
    context.load_verify_locations(os.environ["CLIENT_CA"])
else:
    context.verify_mode = ssl.CERT_NONE


def connect():
    raw = socket.create_connection((host, port))
    return context.wrap_socket(raw, server_hostname="localhost")


def close_as_told(sock):
    print("sent" if mode != "big" else "reading", flush=True)
    how = sys.stdin.readline().strip()
    if how == "rst":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    else:
        # A FIN first: a close with bytes unread (a TLS 1.3 session ticket
        # the server sent after the handshake) would be an RST. No
        # close_notify: the connection just ends, as when a client gives up.
        socket.socket.shutdown(sock, socket.SHUT_WR)
    sock.close()


def read_head(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            raise SystemExit("the server closed before its answer")
        data += piece
    return data


def get(sock, path):
    """One GET on a keep-alive connection; its status."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    data = read_head(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split(b" ")[1])


if mode == "session":
    sock = connect()
    subject = dict(item[0] for item in sock.getpeercert()["subject"])
    print("cn=" + subject["commonName"], flush=True)
    for line in sys.stdin:
        print(get(sock, line.strip()), flush=True)
    sock.close()
elif mode == "requests":
    sock = connect()
    for path in args:
        print(get(sock, path), flush=True)
    sock.close()
elif mode == "hold":
    sock = connect()
    sock.sendall(args[0].encode().decode("unicode_escape").encode("latin1"))
    close_as_told(sock)
elif mode == "big":
    sock = connect()
    sock.sendall(f"GET {args[0]} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    read_head(sock)
    sock.recv(65536)
    close_as_told(sock)
elif mode == "hello-cut":
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    engine = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        engine.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    sock = socket.create_connection((host, port))
    sock.sendall(hello[: len(hello) // 2])
    close_as_told(sock)
elif mode == "h2":
    context.set_alpn_protocols(["h2"])
    sock = connect()
    assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
    sock.recv(9)
    print("h2", flush=True)
    sock.close()
else:
    raise SystemExit(f"unknown mode {mode}")
