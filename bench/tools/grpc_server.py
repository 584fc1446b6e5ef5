"""The gRPC server bench/watch.sh measures `clientgone watch` against (GRPC=1):
an unmodified Python grpcio server answering clientgone.demo.v1.Demo/Wait at
once with an empty message, through grpcio's generic handlers (bytes in,
bytes out: no generated code, no protobuf package).

    python3 grpc_server.py PORT
"""

import sys
from concurrent import futures

import grpc


def main():
    port = int(sys.argv[1])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "clientgone.demo.v1.Demo",
        {"Wait": grpc.unary_unary_rpc_method_handler(lambda request, context: b"")},
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("listening", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
