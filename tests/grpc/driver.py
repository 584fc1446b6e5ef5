"""A gRPC client that is not ours: Python grpcio, driven by a test over stdin.

One JSON command per line in, one JSON answer per line out. Calls are started
by id and go on in the background, so the test can look at the server (its
metrics) between starting a call and cancelling it -- no sleeps.

Messages of clientgone.demo.v1 are encoded by hand (they are one field each),
so no generated Python code is needed.

  {"op": "start", "id": "a", "method": "Wait", "request": {"delay_ms": 5000}, "timeout": 0.3}
  {"op": "start", "id": "t", "method": "Ticks", "request": {"count": 100, "interval_ms": 50}, "cancel_after": 3}
  {"op": "start", "id": "u", "method": "Upload", "chunks": 3, "hang": true}
  {"op": "start", "id": "e", "method": "Echo", "chunks": 3}
  {"op": "cancel", "id": "a"}
  {"op": "result", "id": "a"}        -> {"code": "CANCELLED", "messages": [...]}
  {"op": "invented", "n": 1000}     -> {"codes": {"UNIMPLEMENTED": 1000}}
"""

import json
import random
import string
import sys
import threading

import grpc

SERVICE = "/clientgone.demo.v1.Demo/"


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def read_varint(data, i):
    shift = n = 0
    while True:
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def encode(fields):
    """fields: [(number, int or bytes)] -> protobuf bytes."""
    out = bytearray()
    for number, value in fields:
        if isinstance(value, bytes):
            out += varint(number << 3 | 2) + varint(len(value)) + value
        elif value:
            out += varint(number << 3) + varint(value)
    return bytes(out)


def decode(data):
    """protobuf bytes -> {number: value} (ints and bytes/strings)."""
    fields, i = {}, 0
    while i < len(data):
        key, i = read_varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            fields[number], i = read_varint(data, i)
        elif wire == 2:
            length, i = read_varint(data, i)
            fields[number] = data[i : i + length].decode("utf-8", "replace")
            i += length
        else:
            raise ValueError(f"wire type {wire}")
    return fields


class Call:
    def __init__(self):
        self.done = threading.Event()
        self.code = None
        self.details = None
        self.messages = []
        self.future = None
        self.release = threading.Event()  # ends a hanging request stream

    def finish(self, code, details=None):
        self.code = code
        self.details = details
        self.done.set()


calls = {}


def chunks(call, n, hang):
    for i in range(n):
        yield encode([(1, b"x" * 1000)])
    if hang:
        call.release.wait()


def settle(call, future):
    """Ends a single-answer call (Wait, Upload) with its future's outcome."""
    try:
        call.messages.append(decode(future.result()))
        call.finish("OK")
    except grpc.FutureCancelledError:
        call.finish("CANCELLED")
    except grpc.RpcError as e:
        call.finish(e.code().name, e.details())


def start(channel, cmd):
    call = Call()
    calls[cmd["id"]] = call
    method = cmd["method"]
    timeout = cmd.get("timeout")
    request = cmd.get("request", {})
    path = SERVICE + method
    if method == "Wait":
        stub = channel.unary_unary(path)
        call.future = stub.future(encode([(1, request.get("delay_ms", 0))]), timeout=timeout)

        call.future.add_done_callback(lambda f: settle(call, f))
    elif method in ("Ticks", "Echo"):
        if method == "Ticks":
            stub = channel.unary_stream(path)
            body = encode([(1, request.get("count", 0)), (2, request.get("interval_ms", 0))])
            it = stub(body, timeout=timeout)
        else:
            stub = channel.stream_stream(path)
            it = stub(chunks(call, cmd.get("chunks", 3), cmd.get("hang", False)), timeout=timeout)
        call.future = it
        cancel_after = cmd.get("cancel_after")

        def run():
            try:
                for message in it:
                    call.messages.append(decode(message))
                    if cancel_after is not None and len(call.messages) >= cancel_after:
                        it.cancel()
                call.finish("OK")
            except grpc.RpcError as e:
                call.finish(e.code().name, e.details())

        threading.Thread(target=run, daemon=True).start()
    elif method == "Upload":
        stub = channel.stream_unary(path)
        call.future = stub.future(chunks(call, cmd.get("chunks", 3), cmd.get("hang", False)), timeout=timeout)

        call.future.add_done_callback(lambda f: settle(call, f))
    else:
        raise ValueError(f"unknown method {method}")
    return {"ok": True}


def invented(channel, n):
    codes = {}
    alphabet = string.ascii_letters + string.digits
    for _ in range(n):
        name = "".join(random.choice(alphabet) for _ in range(12))
        service = random.choice(["clientgone.demo.v1.Demo", "no.such.Service" + name[:3]])
        stub = channel.unary_unary(f"/{service}/{name}")
        try:
            stub(b"", timeout=10)
            code = "OK"
        except grpc.RpcError as e:
            code = e.code().name
        codes[code] = codes.get(code, 0) + 1
    return {"codes": codes}


def main():
    channel = grpc.insecure_channel(sys.argv[1])
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        try:
            if op == "start":
                answer = start(channel, cmd)
            elif op == "cancel":
                call = calls[cmd["id"]]
                call.future.cancel()
                call.release.set()
                answer = {"ok": True}
            elif op == "result":
                call = calls[cmd["id"]]
                if not call.done.wait(cmd.get("within", 20)):
                    answer = {"error": "no result in time"}
                else:
                    answer = {"code": call.code, "details": call.details, "messages": call.messages}
            elif op == "invented":
                answer = invented(channel, cmd["n"])
            else:
                answer = {"error": f"unknown op {op}"}
        except Exception as e:  # answered, so the test fails with the reason
            answer = {"error": repr(e)}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
