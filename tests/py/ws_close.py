"""A WebSocket client this project did not write (`websockets` from PyPI) that reports how a
socket closed. It subscribes to a topic, prints the `subscribed` answer, then either closes the
socket itself with 1000 (`client`) or waits for the server to close it (`server`), and prints
the close codes each side sent and received.

usage: python3 ws_close.py ws://127.0.0.1:PORT/v1/ws client|server
"""

import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


def frame(close):
    return None if close is None else {"code": close.code, "reason": close.reason}


async def main(url, mode):
    async with connect(url, subprotocols=["pushpull.v1"]) as ws:
        await ws.send(json.dumps({"op": "subscribe", "id": "s1", "topic": "closing"}))
        print(json.dumps({"type": "answer", "answer": json.loads(await ws.recv())}), flush=True)
        if mode == "client":
            await ws.close(1000, "done")
        else:
            try:
                while True:
                    await ws.recv()
            except ConnectionClosed:
                pass
        await ws.wait_closed()
        print(json.dumps({
            "type": "closed",
            "close_code": ws.close_code,
            "sent": frame(ws.protocol.close_sent),
            "received": frame(ws.protocol.close_rcvd),
        }), flush=True)


asyncio.run(main(sys.argv[1], sys.argv[2]))
