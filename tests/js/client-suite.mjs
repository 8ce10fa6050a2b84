// Runs the browser client's cases (client-cases.js) in headless Chromium, each in a page of
// the server it names, and prints every outcome as one JSON line.
//
//   node client-suite.mjs '[{"name":"…","case":"roundTrip","args":{"url":"http://127.0.0.1:PORT","transport":"ws"}}, …]'
//
// A case that calls `window.sever()` makes this script print `sever` and wait for a line
// `severed` on standard input: the test cuts the page's connections through its proxy.
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const plan = JSON.parse(process.argv[2]);
const cases = readFileSync(new URL('./client-cases.js', import.meta.url), 'utf8');
const input = createInterface({ input: process.stdin });
const lines = input[Symbol.asyncIterator]();

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
const results = [];
try {
  const pages = new Map();
  for (const entry of plan) {
    const origin = new URL(entry.args.url).origin;
    let page = pages.get(origin);
    if (!page) {
      page = await browser.newPage();
      page.on('pageerror', (error) => console.error(`page error: ${error}`));
      page.on('console', (message) => console.error(`page: ${message.text()}`));
      await page.exposeFunction('sever', async () => {
        console.log('sever');
        const { value } = await lines.next();
        if (value !== 'severed') throw new Error(`expected "severed", got ${value}`);
      });
      await page.goto(`${origin}/v1/health`);
      await page.addScriptTag({ content: cases, type: 'module' });
      await page.waitForFunction(() => window.cases !== undefined, null, { timeout: 10000 });
      pages.set(origin, page);
    }
    const started = Date.now();
    try {
      const value = await page.evaluate(([name, args]) => window.cases[name](args), [entry.case, entry.args]);
      results.push({ name: entry.name, ok: true, value, ms: Date.now() - started });
      console.error(`${entry.name}: ok in ${Date.now() - started} ms`);
    } catch (error) {
      results.push({ name: entry.name, ok: false, error: String(error?.message ?? error), ms: Date.now() - started });
      console.error(`${entry.name}: failed in ${Date.now() - started} ms: ${error?.message ?? error}`);
    }
  }
} finally {
  await browser.close();
  input.close();
}
console.log(JSON.stringify(results));
