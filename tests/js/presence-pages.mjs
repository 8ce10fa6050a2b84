// Presence between two pages in headless Chromium, each with the browser client: page A
// reaches the server through the test's proxy, page B directly. Each watches the topic's
// presence (a snapshot, then its presence log from the snapshot's cursor) and joins the topic;
// then A's network is cut, B sees A leave, a third member comes and goes, and A, back,
// resumes its presence log from where it was.
//
//   node presence-pages.mjs '{"a":"http://127.0.0.1:PROXY","b":"http://127.0.0.1:SERVER","transport":"sse"}'
//
// It prints `cut` and `restore` and waits for `done` on standard input after each: the test
// cuts (and restores) page A's network at its proxy. Its last line is the outcome as JSON.
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const { a, b, transport } = JSON.parse(process.argv[2]);
const input = createInterface({ input: process.stdin });
const lines = input[Symbol.asyncIterator]();
const STEP = 15000;

async function ask(what) {
  console.log(what);
  const { value } = await lines.next();
  if (value !== 'done') throw new Error(`expected "done" after ${what}, got ${value}`);
}

// What each page runs: a client that tells its name, its watch of the topic's presence.
const module = `
import { connect } from '/pushpull/pushpull.js';
const options = (name) => ({ transport: ${JSON.stringify(transport)}, info: { name }, retryDelay: 100, maxRetryDelay: 500 });
window.page = {
  async watch(topic, name) {
    const client = await connect(options(name));
    const snapshot = await client.presence(topic);
    const events = [];
    const log = client.subscribe('.presence:' + topic, { after: snapshot.cursor });
    log.on('message', (m) => {
      const member = JSON.parse(m.data);
      events.push({ event: m.event, name: member.info?.name, client: member.client, offset: m.offset });
    });
    log.on('gap', (g) => events.push({ event: 'gap', first: g.first, last: g.last }));
    await log.opened;
    window.state = { client, topic, events };
    return snapshot.members.length;
  },
  async join() {
    const { client, topic } = window.state;
    window.state.sub = client.subscribe(topic);
    await window.state.sub.opened;
  },
  events() { return window.state.events; },
  async another(name) {
    const client = await connect(options(name));
    const sub = client.subscribe(window.state.topic);
    await sub.opened;
    window.state.another = { client, sub };
  },
  leaveAnother() {
    window.state.another.sub.close();
    window.state.another.client.close();
  },
  async names() {
    const { members } = await window.state.client.presence(window.state.topic);
    return members.map((m) => m.info?.name).sort();
  },
};
`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
let outcome;
try {
  const open = async (url) => {
    const page = await browser.newPage();
    page.on('pageerror', (error) => console.error(`page error: ${error}`));
    await page.goto(`${url}/v1/health`);
    await page.addScriptTag({ content: module, type: 'module' });
    await page.waitForFunction(() => window.page !== undefined, null, { timeout: 10000 });
    return page;
  };
  const [pageA, pageB] = [await open(a), await open(b)];
  const events = (page) => page.evaluate(() => window.page.events());
  const until = async (page, count, what) => {
    const deadline = Date.now() + STEP;
    for (;;) {
      const got = await events(page);
      if (got.length >= count) return got;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(got)}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  };
  const topic = `js.presence.${transport}.${Math.random().toString(36).slice(2, 10)}`;
  const before = [
    await pageA.evaluate(([t]) => window.page.watch(t, 'A'), [topic]),
    await pageB.evaluate(([t]) => window.page.watch(t, 'B'), [topic]),
  ];
  await pageA.evaluate(() => window.page.join());
  await until(pageB, 1, 'B to see A join');
  await pageB.evaluate(() => window.page.join());
  await until(pageA, 2, 'A to see B join');
  const seenBeforeCut = await until(pageB, 2, 'B to see itself join');

  await ask('cut');
  const started = Date.now();
  const left = (await until(pageB, 3, 'B to see A leave'))[2];
  const leaveMs = Date.now() - started;
  // While A is away, another member comes and goes.
  await pageB.evaluate(() => window.page.another('C'));
  await until(pageB, 4, 'B to see C join');
  await pageB.evaluate(() => window.page.leaveAnother());
  await until(pageB, 5, 'B to see C leave');
  await ask('restore');

  const eventsA = await until(pageA, 6, 'A, back, to read what it missed and its own join');
  const eventsB = await until(pageB, 6, 'B to see A join again');
  // Anything more would be a repeat.
  await new Promise((resolve) => setTimeout(resolve, 700));
  outcome = {
    before,
    seenBeforeCut,
    left,
    leaveMs,
    eventsA: await events(pageA),
    eventsB: await events(pageB),
    settledA: eventsA.length,
    settledB: eventsB.length,
    namesA: await pageA.evaluate(() => window.page.names()),
    namesB: await pageB.evaluate(() => window.page.names()),
  };
} finally {
  await browser.close();
  input.close();
}
console.log(JSON.stringify(outcome));
