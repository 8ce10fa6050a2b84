// Run with Node (22 or later: its own fetch and WebSocket) in a project that installed
// @pushpull/client from its packed tarball: every transport publishes, subscribes from the
// beginning, receives text and bytes in order, and fetches a page; `auto` picks one.
//
//   node node-client.mjs http://127.0.0.1:PORT      (prints one JSON line)
import { connect, TRANSPORTS } from '@pushpull/client';

const url = process.argv[2];
const results = {};
for (const transport of TRANSPORTS) {
  const client = await connect({ url, transport });
  const topic = `node-${transport}`;
  const sub = client.subscribe(topic, { after: 'beginning' });
  await sub.opened;
  await client.publish(topic, 'from node');
  await client.publish(topic, new Uint8Array([0, 1, 255]));
  const received = [];
  for await (const delivery of sub) {
    received.push({
      type: delivery.type,
      offset: delivery.offset,
      data: typeof delivery.data === 'string' ? delivery.data : Array.from(delivery.data),
    });
    if (received.length === 2) break;
  }
  const page = await client.fetch(topic, { after: 'beginning' });
  results[transport] = { received, fetched: page.messages.length, requests: client.stats.requests };
  client.close();
}
const auto = await connect({ url });
results.auto = auto.transport;
auto.close();
console.log(JSON.stringify(results));
