// The browser client's cases, run inside a page of the server under test (injected as a
// module by client-suite.mjs). Each returns what it saw; the Rust test asserts on it.
import { connect } from '/pushpull/pushpull.js';

const STEP = 15000;

function within(promise, what, ms = STEP) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

function topic(name) {
  return `js.${name}.${Math.random().toString(36).slice(2, 10)}`;
}

/** The next `count` deliveries of `sub` (messages and gaps), listening only until then. */
function collect(sub, count) {
  const got = [];
  const stops = [];
  return within(new Promise((resolve, reject) => {
    const take = (delivery) => {
      if (got.length < count) got.push(delivery);
      if (got.length === count) resolve(got);
    };
    stops.push(sub.on('message', take), sub.on('gap', take), sub.on('error', reject));
  }), `${count} deliveries`).finally(() => stops.forEach((stop) => stop())).then(() => got);
}

/** Deliveries that arrive within `ms`: what must be none once a case has what it expects. */
function extra(sub, ms = 700) {
  const got = [];
  sub.on('message', (m) => got.push(m.offset));
  sub.on('gap', (g) => got.push(`gap ${g.first}-${g.last}`));
  return new Promise((resolve) => setTimeout(() => resolve(got), ms));
}

const text = (data) => (typeof data === 'string' ? data : `bytes:${Array.from(data).join(',')}`);
const summary = (d) => (d.type === 'gap'
  ? { type: 'gap', reason: d.reason, first: d.first, last: d.last, cursor: d.cursor }
  : { type: 'message', offset: d.offset, data: text(d.data), event: d.event, contentType: d.contentType, timestamp: d.timestamp, cursor: d.cursor });

async function client(args) {
  return within(connect({ transport: args.transport, url: args.url, probeTimeout: 5000, longpollWait: 5, pollInterval: 200, ...args.options }), 'connect');
}

window.cases = {
  /** Publish text, bytes and a typed message; read them back by subscription and by fetch. */
  async roundTrip(args) {
    const c = await client(args);
    const t = topic('round');
    const receipts = [
      await c.publish(t, 'hello'),
      await c.publish(t, new Uint8Array([0, 255, 1])),
      await c.publish(t, 'line one\nline two', { event: 'note', contentType: 'text/plain' }),
    ];
    const sub = c.subscribe(t, { after: 'beginning' });
    const got = await collect(sub, 3);
    const after = await extra(sub);
    const page = await c.fetch(t, { after: 'beginning', limit: 10 });
    sub.close();
    c.close();
    return {
      transport: c.transport,
      receipts: receipts.map((r) => r.offset),
      deliveries: got.map(summary),
      extra: after,
      page: page.messages.map(summary),
      next: page.next,
      stats: c.stats,
    };
  },

  /** `latest` starts after what exists; a cursor starts after itself. */
  async cursors(args) {
    const c = await client(args);
    const t = topic('cursors');
    const first = await c.publish(t, 'one');
    await c.publish(t, 'two');
    const latest = c.subscribe(t, { after: 'latest' });
    await within(latest.opened, 'the latest subscription to open');
    const fromFirst = c.subscribe(t, { after: first.cursor });
    await c.publish(t, 'three');
    const gotLatest = await collect(latest, 1);
    const gotAfter = await collect(fromFirst, 2);
    const extraLatest = await extra(latest);
    latest.close();
    fromFirst.close();
    c.close();
    return {
      latest: gotLatest.map((d) => d.offset),
      after: gotAfter.map((d) => d.offset),
      extra: extraLatest,
    };
  },

  /** Two subscriptions to one topic on one client both get every message. */
  async twoSubscriptions(args) {
    const c = await client(args);
    const t = topic('two');
    const a = c.subscribe(t, { after: 'beginning' });
    const b = c.subscribe(t, { after: 'beginning' });
    await within(Promise.all([a.opened, b.opened]), 'both to open');
    for (const n of [1, 2, 3]) await c.publish(t, `m${n}`);
    const [gotA, gotB] = await Promise.all([collect(a, 3), collect(b, 3)]);
    a.close();
    b.close();
    c.close();
    return { a: gotA.map((d) => d.offset), b: gotB.map((d) => d.offset) };
  },

  /** Behind retention (a server keeping 5): a gap naming exactly what was missed, then the rest. */
  async gap(args) {
    const c = await client(args);
    const t = topic('gap');
    const receipts = [];
    for (let n = 1; n <= 12; n++) receipts.push(await c.publish(t, `m${n}`));
    const behind = receipts[1].cursor;
    const page = await c.fetch(t, { after: behind, limit: 100 });
    const sub = c.subscribe(t, { after: behind });
    const got = await collect(sub, 6);
    sub.close();
    c.close();
    return {
      page: { gap: page.gap && summary(page.gap), offsets: page.messages.map((m) => m.offset) },
      deliveries: got.map(summary),
      cursorAfterGap: got[0].cursor,
      expectedGapCursor: `${receipts[6].cursor}`,
    };
  },

  /** A 1 MiB payload. */
  async large(args) {
    const c = await client(args);
    const t = topic('large');
    const payload = 'x'.repeat(1024 * 1024 - 1) + 'y';
    const sub = c.subscribe(t, { after: 'beginning' });
    await within(sub.opened, 'the subscription to open');
    await c.publish(t, payload);
    const [got] = await collect(sub, 1);
    sub.close();
    c.close();
    return { length: got.data.length, ends: got.data.slice(-2) };
  },

  /** The connection is severed mid-stream (by the test, through its proxy): nothing lost, nothing twice. */
  async resume(args) {
    const c = await client(args);
    const t = topic('resume');
    const sub = c.subscribe(t, { after: 'beginning' });
    const reconnects = [];
    sub.on('reconnecting', (e) => reconnects.push(e.kind));
    for (let n = 1; n <= 5; n++) await c.publish(t, `m${n}`);
    const first = await collect(sub, 5);
    await window.sever();
    const publishes = [];
    for (let n = 6; n <= 10; n++) publishes.push((await c.publish(t, `m${n}`)).offset);
    const second = await collect(sub, 5);
    const after = await extra(sub);
    sub.close();
    c.close();
    return {
      offsets: [...first, ...second].map((d) => d.offset),
      data: [...first, ...second].map((d) => d.data),
      publishes,
      extra: after,
      reconnected: reconnects.length > 0,
    };
  },

  /**
   * Twenty topics on one client (over HTTP/1.1, where a page gets six connections to a host):
   * all deliver; the connection is severed mid-stream and every topic resumes, nothing lost or
   * repeated. Then one more subscription joins and one leaves, on the live connection.
   */
  async manyTopics(args) {
    const c = await client(args);
    const topics = Array.from({ length: 20 }, (_, n) => topic(`many${n}`));
    const subs = topics.map((t) => c.subscribe(t, { after: 'beginning' }));
    await within(Promise.all(subs.map((s) => s.opened)), 'twenty subscriptions to open');
    const reconnects = [];
    subs[0].on('reconnecting', (e) => reconnects.push(e.kind));
    const publishAll = (n) => Promise.all(topics.map((t) => c.publish(t, `${t}/${n}`)));
    await publishAll(1);
    await publishAll(2);
    const first = await Promise.all(subs.map((s) => collect(s, 2)));
    await window.sever();
    await publishAll(3);
    await publishAll(4);
    const second = await Promise.all(subs.map((s) => collect(s, 2)));
    // A topic added and one removed on the live connection: the others go on unharmed.
    const late = topic('late');
    await c.publish(late, 'early');
    const joined = c.subscribe(late, { after: 'beginning' });
    subs[19].close();
    await publishAll(5);
    const third = await Promise.all(subs.slice(0, 19).map((s) => collect(s, 1)));
    const [joinedGot] = await collect(joined, 1);
    const extras = await Promise.all(subs.slice(0, 19).map((s) => extra(s, 300)));
    joined.close();
    subs.forEach((s) => s.close());
    c.close();
    return {
      offsets: topics.map((t, n) => [...first[n], ...second[n], ...(third[n] ?? [])].map((d) => d.offset)),
      data: topics.map((t, n) => [...first[n], ...second[n]].map((d) => d.data)),
      topics,
      joined: joinedGot.data,
      extra: extras.flat(),
      reconnected: reconnects.length > 0,
    };
  },

  /**
   * A prefix subscription: a topic that exists, one created while it is open, one created
   * while its connection is cut; its cursor (a cursor set) resumes it later, nothing repeated.
   */
  async prefix(args) {
    const c = await client(args);
    const base = topic('prefix');
    const [a, b, z] = [`${base}.a`, `${base}.b`, `${base}.z`];
    await c.publish(a, 'a1');
    await c.publish(`${base}x.not`, 'not selected');
    const sub = c.subscribe(`${base}.*`, { after: 'beginning' });
    await within(sub.opened, 'the prefix subscription to open');
    await c.publish(b, 'b1');
    const first = await collect(sub, 2);
    await window.sever();
    await c.publish(a, 'a2');
    await c.publish(z, 'z1');
    const second = await collect(sub, 2);
    const cursor = sub.cursor;
    sub.close();
    await c.publish(b, 'b2');
    const again = c.subscribe(`${base}.*`, { after: cursor });
    const [resumed] = await collect(again, 1);
    const after = await extra(again, 500);
    again.close();
    c.close();
    const seen = [...first, ...second].map((d) => `${d.topic.slice(base.length + 1)}:${d.data}`);
    return { seen: seen.sort(), cursor, resumed: `${resumed.topic.slice(base.length + 1)}:${resumed.data}`, extra: after };
  },

  /**
   * A stock EventSource on one URL naming twenty topics: all deliver; the connection is
   * severed and EventSource reconnects by itself, sending the cursor set it was last given as
   * Last-Event-ID, and every topic resumes, nothing lost or repeated.
   */
  async eventSourceMany(args) {
    const c = await client({ ...args, transport: 'sse' });
    const topics = Array.from({ length: 20 }, (_, n) => topic(`es${n}`));
    const query = topics.map((t) => `topic=${encodeURIComponent(t)}`).join('&');
    const source = new EventSource(`${args.url}/v1/events?${query}&after=beginning`);
    const got = [];
    let errors = 0;
    let wanted = 0;
    let reached;
    source.onmessage = (event) => {
      got.push({ data: event.data, id: event.lastEventId });
      if (got.length === wanted) reached();
    };
    source.onerror = () => { errors += 1; };
    const until = (count) => within(new Promise((resolve) => {
      wanted = count;
      reached = resolve;
      if (got.length >= count) resolve();
    }), `${count} events`);
    await within(new Promise((resolve) => { source.onopen = resolve; }), 'the event source to open');
    for (const n of [1, 2]) await Promise.all(topics.map((t) => c.publish(t, `${t}/${n}`)));
    await until(40);
    await window.sever();
    for (const n of [3, 4]) await Promise.all(topics.map((t) => c.publish(t, `${t}/${n}`)));
    await until(80);
    await new Promise((resolve) => setTimeout(resolve, 700));
    source.close();
    c.close();
    const perTopic = topics.map((t) => got.filter((e) => e.data.startsWith(`${t}/`)).map((e) => e.data));
    return { topics, perTopic, total: got.length, errors, lastId: got.at(-1)?.id };
  },

  /** `auto` against a server that refuses WebSocket upgrades: the next transport, and why. */
  async auto(args) {
    const c = await within(connect({ transport: 'auto', url: args.url, probeTimeout: 5000 }), 'auto');
    const t = topic('auto');
    const sub = c.subscribe(t, { after: 'latest' });
    await within(sub.opened, 'the subscription to open');
    await c.publish(t, 'over the fallback');
    const [got] = await collect(sub, 1);
    sub.close();
    c.close();
    return {
      transport: c.transport,
      passed: c.passed.map((p) => ({ transport: p.transport, kind: p.error.kind })),
      data: got.data,
    };
  },

  /**
   * Four-second tokens of one subject, signed here (HS256, WebCrypto): the WebSocket client
   * refreshes each on its socket before it expires, so one socket carries the whole run.
   */
  async refresh(args) {
    const key = await crypto.subtle.importKey('raw', new TextEncoder().encode(args.secret),
      { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
    const base64url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)))
      .replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
    const json = (value) => base64url(new TextEncoder().encode(JSON.stringify(value)));
    let asked = 0;
    const hook = async () => {
      asked += 1;
      const claims = { sub: 'page', exp: Math.floor(Date.now() / 1000) + 4,
        pushpull: { publish: [args.topic], subscribe: [args.topic] } };
      const signed = `${json({ alg: 'HS256', typ: 'JWT', kid: 'k1' })}.${json(claims)}`;
      const mac = await crypto.subtle.sign('HMAC', key, new TextEncoder().encode(signed));
      return `${signed}.${base64url(mac)}`;
    };
    const c = await client({ ...args, options: { token: hook } });
    const sub = c.subscribe(args.topic, { after: 'latest' });
    await within(sub.opened, 'the subscription to open');
    const sent = [];
    for (let n = 0; n < 18; n += 1) {
      sent.push((await c.publish(args.topic, `tick ${n}`)).offset);
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    const got = await collect(sub, sent.length);
    sub.close();
    const sockets = c.stats.requests;
    c.close();
    return { sent, offsets: got.map((d) => d.offset), asked, sockets };
  },

  /** The token hook: the first token is refused (expired); the renewed one works. */
  async token(args) {
    const asked = [];
    const hook = ({ renew }) => {
      asked.push(renew);
      return renew ? args.good : args.expired;
    };
    const c = await client({ ...args, options: { token: hook } });
    const t = args.topic;
    const receipt = await c.publish(t, 'with a token');
    const sub = c.subscribe(t, { after: 'beginning' });
    const [got] = await collect(sub, 1);
    sub.close();
    // A topic the token does not grant: a typed error, and the subscription ends.
    const denied = c.subscribe('not.granted', { after: 'latest' });
    const refusal = await within(new Promise((resolve) => denied.on('error', resolve)), 'a refusal');
    c.close();
    return { offset: receipt.offset, data: got.data, asked, refusal: { kind: refusal.kind, retryable: refusal.retryable } };
  },
};
