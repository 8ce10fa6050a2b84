"""A WebSocket client this project did not write (`websockets` from PyPI, which offers
permessage-deflate and compresses every message it sends once agreed) against the server: it
prints the extensions agreed, subscribes, publishes two large messages on the socket (each
compressed by the client on its own), and prints the answers and the two messages pushed back
(compressed by the server, inflated by the client).

usage: python3 ws_deflate.py ws://127.0.0.1:PORT/v1/ws
"""

import asyncio
import json
import sys

from websockets.asyncio.client import connect


def line(**fields):
    print(json.dumps(fields), flush=True)


async def main(url):
    async with connect(url, subprotocols=["pushpull.v1"]) as ws:
        line(
            type="agreed",
            header=ws.response.headers.get("Sec-WebSocket-Extensions"),
            extensions=[extension.name for extension in ws.protocol.extensions],
        )
        await ws.send(json.dumps({"op": "subscribe", "id": "s", "topic": "deflated"}))
        line(type="answer", answer=json.loads(await ws.recv()))
        for n in (1, 2):
            data = f"{n}: " + "words that repeat and compress well, " * 50
            await ws.send(json.dumps({"op": "publish", "id": f"p{n}", "topic": "deflated", "data": data}))
        for _ in range(4):
            frame = json.loads(await ws.recv())
            line(type="frame", frame=frame)


asyncio.run(main(sys.argv[1]))
