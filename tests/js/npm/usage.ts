// An application's use of @pushpull/client, type-checked by check-types.mjs under `strict`.
// Each `@ts-expect-error` marks a mistake the types must catch.
import {
  AUTO_ORDER,
  type Client,
  connect,
  continuity,
  type Delivery,
  type Gap,
  type Message,
  NdjsonDecoder,
  type Page,
  parseCursor,
  PushpullError,
  type Receipt,
  SseDecoder,
  type Subscription,
  TRANSPORTS,
  type TransportName,
} from '@pushpull/client';

export async function application(url: string): Promise<string[]> {
  const client: Client = await connect({
    url,
    transport: 'auto',
    token: async ({ renew }) => (renew ? null : 'token'),
    probeTimeout: 2000,
    order: ['sse', 'poll'],
  });
  const name: TransportName = client.transport;
  const receipt: Receipt = await client.publish('orders', new Uint8Array([1, 2]), { event: 'created' });
  const page: Page = await client.fetch('orders', { after: receipt.cursor, limit: 10 });
  const texts: string[] = page.messages.map((m: Message) => (typeof m.data === 'string' ? m.data : `${m.data.length} bytes`));
  const sub: Subscription = client.subscribe('orders', { after: 'beginning' });
  const stop: () => void = sub.on('gap', (gap: Gap) => console.warn(gap.reason, gap.first, gap.last));
  sub.on('error', (error: PushpullError) => console.error(error.kind, error.status, error.retryable));
  await sub.opened;
  for await (const delivery of sub) {
    const d: Delivery = delivery;
    if (d.type === 'message') texts.push(`${d.offset}`);
    else texts.push(d.cursor);
    break;
  }
  stop();
  sub.close();
  client.close();
  const position = parseCursor(receipt.cursor);
  if (position) texts.push(`${position.epoch}:${position.offset}`);
  texts.push(continuity('latest', page.messages[0]));
  for (const record of new SseDecoder().feed('id: e-0\n\n')) texts.push('start' in record ? record.start : record.type);
  for (const record of new NdjsonDecoder().feed('')) texts.push('start' in record ? record.start : record.cursor);
  texts.push(...AUTO_ORDER, ...TRANSPORTS, name, `${client.stats.requests}`);
  return texts;
}

export async function mistakes(client: Client): Promise<void> {
  // @ts-expect-error: not a transport
  await connect({ transport: 'carrier-pigeon' });
  // @ts-expect-error: a topic is a string
  await client.publish(42, 'x');
  // @ts-expect-error: no such event
  client.subscribe('t').on('mesage', () => {});
  // @ts-expect-error: a page's messages are not promises
  (await client.fetch('t')).messages[0].then;
  // @ts-expect-error: stats are read-only
  client.stats = { requests: 0, bytesIn: 0, bytesOut: 0, messages: 0 };
}
