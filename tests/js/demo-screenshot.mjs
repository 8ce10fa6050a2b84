// Opens the demo page in headless Chromium, lets the ticker arrive over every transport in
// turn (switching with the page's own buttons), takes a screenshot, and prints what the page
// showed as JSON.
//
//   node demo-screenshot.mjs http://127.0.0.1:PORT OUT.png
import { chromium } from 'playwright-core';

const [base, out] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1024, height: 900 } });
  const errors = [];
  page.on('pageerror', (error) => errors.push(String(error)));
  await page.goto(`${base}/demo?transport=ws`);
  const seen = {};
  for (const transport of ['ws', 'sse', 'stream', 'longpoll', 'poll', 'auto']) {
    const before = Number(await page.evaluate(() => document.body.dataset.messages ?? 0));
    if (transport !== 'ws') await page.click(`#switcher button[data-choice="${transport}"]`);
    // Two more prices (the ticker publishes every 500 ms).
    await page.waitForFunction(
      (before) => Number(document.body.dataset.messages ?? 0) >= before + 2,
      before,
      { timeout: 15000 },
    );
    seen[transport] = await page.textContent('#transport');
  }
  await page.waitForTimeout(600); // the cost table refreshes twice a second
  const costs = await page.$$eval('#costs tbody tr', (rows) => rows.map((row) => {
    const cells = [...row.querySelectorAll('td')].map((td) => td.textContent);
    return { transport: cells[0], messages: Number(cells[1]), requests: Number(cells[2]), bytesIn: Number(cells[3]) };
  }));
  const offsets = await page.textContent('#offset');
  const gaps = await page.textContent('#gaps');
  const shown = await page.evaluate(() => window.pushpullDemo.offsets);
  await page.screenshot({ path: out, fullPage: true });
  console.log(JSON.stringify({ seen, costs, offset: Number(offsets), gaps: Number(gaps), shown, errors }));
} finally {
  await browser.close();
}
