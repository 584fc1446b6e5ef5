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


def watch(context, method):
    """Reports the call's start now, and its cancel from grpcio's termination
    callback: a streaming handler suspended at `yield` is never resumed after
    a cancel, so only the callback is sure to see it. Returns an event set
    when the call ends, and `done()` for the handler to call when it finished."""
    state = {"done": False}
    ended = threading.Event()

    def on_end():
        ended.set()
        if not state["done"]:
            report("cancelled", method)

    # Registered before "start" is reported (a test cancels on it); a call
    # that already ended takes no callback, and says so.
    if not context.add_callback(on_end):
        on_end()
    report("start", method)

    def done():
        state["done"] = True
        report("done", method)

    return ended, done


def wait(request, context):
    ended, done = watch(context, "Wait")
    delay = decode(request).get(1, 0) or 5000
    if delay > 3_600_000:
        done()
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "delay_ms must be at most 3600000")
    if ended.wait(delay / 1000):
        return b""
    done()
    return encode([(1, b"Hello, World!")])


def ticks(request, context):
    ended, done = watch(context, "Ticks")
    fields = decode(request)
    count, interval = fields.get(1, 0) or 10, fields.get(2, 0) or 500
    for n in range(count):
        if n and ended.wait(interval / 1000):
            return
        yield encode([(1, n)])
    done()


def upload(request_iterator, context):
    ended, done = watch(context, "Upload")
    total = 0
    try:
        for chunk in request_iterator:
            total += len(decode(chunk).get(1, ""))
    except grpc.RpcError:
        return b""
    if ended.is_set():
        return b""
    done()
    return encode([(1, total)])


def echo(request_iterator, context):
    ended, done = watch(context, "Echo")
    try:
        for chunk in request_iterator:
            yield chunk
    except grpc.RpcError:
        return
    done()


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
