// The entry of the browser bundle: an application that imports @pushpull/client by its package
// name, bundled by esbuild and run in a page of the server (`connect()` reaches the page's own
// origin). The outcome is `window.bundleResult`.
import { connect } from '@pushpull/client';

window.bundleResult = (async () => {
  const client = await connect();
  const sub = client.subscribe('bundled', { after: 'beginning' });
  await sub.opened;
  await client.publish('bundled', 'from the bundle');
  let first;
  for await (const delivery of sub) {
    first = delivery;
    break;
  }
  client.close();
  return { transport: client.transport, data: first.data, offset: first.offset };
})();
