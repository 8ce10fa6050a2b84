// Follows a pushpull SSE stream with the `eventsource` package (a WHATWG EventSource for
// Node) and prints one JSON line per thing that happens, so a test can check what a
// third-party client sees. Exits after COUNT events.
//
// usage: node eventsource-client.mjs URL COUNT
import { EventSource } from "eventsource";

const [url, count] = process.argv.slice(2);
let seen = 0;
const source = new EventSource(url);
const say = (line) => console.log(JSON.stringify(line));

const onEvent = (event) => {
  say({ type: event.type, data: event.data, lastEventId: event.lastEventId });
  seen += 1;
  if (seen >= Number(count)) {
    source.close();
    process.exit(0);
  }
};

source.onopen = () => say({ type: "open" });
source.onerror = (error) => say({ type: "error", message: String(error?.message ?? "") });
source.onmessage = onEvent;
source.addEventListener("price", onEvent);
source.addEventListener("pushpull-gap", onEvent);
