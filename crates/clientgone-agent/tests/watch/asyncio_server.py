"""An HTTPS server on asyncio (Python's own, not ours) for the watch tests.
asyncio's TLS runs OpenSSL over memory buffers (ssl.MemoryBIO) and moves the
ciphertext itself, so no OpenSSL call ever touches the socket: watch cannot
tie its connections to their SSL objects. Every request gets 200 "ok".
Arguments: CERT KEY. Prints its port on the first line of stdout.
"""
import asyncio
import ssl
import sys


async def handle(reader, writer):
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
        pass
    writer.close()


async def main():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[1], sys.argv[2])
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


asyncio.run(main())
