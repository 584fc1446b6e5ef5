"""A gRPC server that is not ours: Python grpcio serving clientgone.demo.v1.Demo.

    python3 server.py PORT      (0: any free port)

Prints one JSON line per event on stdout, so a test can see what the upstream
saw: {"port": N} once listening, then {"event": "start", "method": M} when a
call arrives, {"event": "cancelled", "method": M} when a call ended before its
handler was done (the client, or a proxy in front, cancelled it), and
{"event": "done", "method": M} when a handler finished.

Messages are encoded by hand, as in driver.py.
"""

import json
import sys
import threading
import time
from concurrent import futures

import grpc

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from driver import decode, encode  # noqa: E402

lock = threading.Lock()


def report(event, method):
    with lock:
        print(json.dumps({"event": event, "method": method, "at": time.monotonic()}), flush=True)


def wait(request, context):
    report("start", "Wait")
    delay = decode(request).get(1, 0) or 5000
    if delay > 3_600_000:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "delay_ms must be at most 3600000")
    ended = threading.Event()
    context.add_callback(ended.set)
    if ended.wait(delay / 1000):
        report("cancelled", "Wait")
        return b""
    report("done", "Wait")
    return encode([(1, b"Hello, World!")])


def ticks(request, context):
    report("start", "Ticks")
    fields = decode(request)
    count, interval = fields.get(1, 0) or 10, fields.get(2, 0) or 500
    ended = threading.Event()
    context.add_callback(ended.set)
    for n in range(count):
        if n and ended.wait(interval / 1000):
            report("cancelled", "Ticks")
            return
        yield encode([(1, n)])
    report("done", "Ticks")


def upload(request_iterator, context):
    report("start", "Upload")
    total = 0
    try:
        for chunk in request_iterator:
            total += len(decode(chunk).get(1, ""))
    except grpc.RpcError:
        report("cancelled", "Upload")
        return b""
    if not context.is_active():
        report("cancelled", "Upload")
        return b""
    report("done", "Upload")
    return encode([(1, total)])


def echo(request_iterator, context):
    report("start", "Echo")
    try:
        for chunk in request_iterator:
            yield chunk
    except grpc.RpcError:
        report("cancelled", "Echo")
        return
    report("done", "Echo")


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    handlers = {
        "Wait": grpc.unary_unary_rpc_method_handler(wait),
        "Ticks": grpc.unary_stream_rpc_method_handler(ticks),
        "Upload": grpc.stream_unary_rpc_method_handler(upload),
        "Echo": grpc.stream_stream_rpc_method_handler(echo),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("clientgone.demo.v1.Demo", handlers),))
    port = server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
    server.start()
    print(json.dumps({"port": port}), flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
