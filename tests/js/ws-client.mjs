// A pushpull WebSocket client written only from docs/protocol/websocket.md, on the `ws`
// package. It subscribes to topics `a` and `b`, publishes one message to each, fetches `a`,
// and, whenever the socket drops, reconnects and subscribes again from the last cursor it
// received. It prints one JSON line per thing that happens and exits after EXPECTED messages.
//
// usage: node ws-client.mjs WS_URL EXPECTED
import WebSocket from "ws";

const [url, expected] = process.argv.slice(2);
const topics = ["a", "b"];
const cursors = { a: "beginning", b: "beginning" };
let received = 0;
let nextId = 1;
let firstSession = true;
const say = (line) => console.log(JSON.stringify(line));

function connect() {
  const ws = new WebSocket(url, "pushpull.v1");
  const send = (request) => ws.send(JSON.stringify({ id: String(nextId++), ...request }));
  let subscribed = 0;

  ws.on("open", () => {
    say({ type: "open", protocol: ws.protocol });
    for (const topic of topics) send({ op: "subscribe", topic, after: cursors[topic] });
  });

  ws.on("message", (data, isBinary) => {
    if (isBinary) {
      say({ type: "unexpected-binary" });
      return;
    }
    const frame = JSON.parse(data.toString());
    switch (frame.op) {
      case "subscribed":
        subscribed += 1;
        say({ type: "subscribed", topic: frame.topic, cursor: frame.cursor });
        if (subscribed === topics.length && firstSession) {
          firstSession = false;
          for (const topic of topics) send({ op: "publish", topic, data: `${topic}1` });
          send({ op: "fetch", topic: "a", after: "beginning", limit: 10 });
        }
        break;
      case "message":
        cursors[frame.topic] = frame.cursor;
        received += 1;
        say({ type: "message", topic: frame.topic, data: frame.data, cursor: frame.cursor });
        if (received >= Number(expected)) {
          ws.close(1000);
          process.exit(0);
        }
        break;
      case "gap":
        cursors[frame.topic] = frame.cursor;
        say({ type: "gap", topic: frame.topic, reason: frame.reason });
        break;
      case "published":
        say({ type: "published", topic: frame.topic, cursor: frame.cursor });
        break;
      case "page":
        say({ type: "page", topic: frame.topic, data: frame.messages.map((m) => m.data), next: frame.next });
        break;
      default:
        say({ type: frame.op, frame });
    }
  });

  ws.on("close", (code) => {
    say({ type: "close", code });
    setTimeout(connect, 100);
  });
  ws.on("error", () => {}); // "close" follows
}

connect();
