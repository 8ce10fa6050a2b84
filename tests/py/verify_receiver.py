"""A webhook receiver that checks every delivery with the Standard Webhooks reference library
(`standardwebhooks` from PyPI), not with pushpull's code. It prints its port, then one JSON line
per delivery: whether the library verified it, and what it carried.

usage: python3 verify_receiver.py WHSEC_SECRET
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from standardwebhooks.webhooks import Webhook

webhook = Webhook(sys.argv[1])


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:
            payload = webhook.verify(body, headers)
            line = {"verified": True, "id": headers["webhook-id"], "payload": payload,
                    "signatures": headers["webhook-signature"].count("v1,")}
            status = 204
        except Exception as error:  # the library raises WebhookVerificationError
            line = {"verified": False, "error": str(error)}
            status = 401
        print(json.dumps(line), flush=True)
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", 0), Handler)
print(json.dumps({"port": server.server_address[1]}), flush=True)
server.serve_forever()
