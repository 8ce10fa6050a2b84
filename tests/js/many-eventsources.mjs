// Opens COUNT EventSources on one page of a headless Chromium, publishes one message to each
// topic once all are open, and prints what each received and which protocols the page used.
// Over HTTP/1.1 a browser holds at most six connections per host, so the seventh stream
// never opens; over HTTP/2 (ALPN h2) they share one connection.
//
//   node many-eventsources.mjs https://localhost:PORT COUNT [TIMEOUT_MS]
import { chromium } from 'playwright-core';

const [base, countText, timeoutText] = process.argv.slice(2);
const count = Number(countText);
const timeout = Number(timeoutText ?? 15000);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
try {
  // The server's certificate is from the test's own throwaway CA.
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  await page.goto(`${base}/v1/health`);
  const result = await page.evaluate(async ([count, timeout]) => {
    const sources = [];
    const received = new Array(count).fill(null);
    let opened = 0;
    const outcome = await new Promise((resolve) => {
      const timer = setTimeout(() => resolve('timeout'), timeout);
      for (let i = 0; i < count; i++) {
        const source = new EventSource(`/v1/topics/browser-${i}/events`);
        sources.push(source);
        source.onopen = async () => {
          opened += 1;
          if (opened === count) {
            for (let j = 0; j < count; j++) {
              await fetch(`/v1/topics/browser-${j}`, { method: 'POST', body: `hello ${j}` });
            }
          }
        };
        source.onmessage = (event) => {
          received[i] = event.data;
          if (received.every((data) => data !== null)) {
            clearTimeout(timer);
            resolve('done');
          }
        };
      }
    });
    sources.forEach((source) => source.close());
    const protocols = [...new Set(performance.getEntriesByType('resource')
      .concat(performance.getEntriesByType('navigation'))
      .map((entry) => entry.nextHopProtocol))];
    return { outcome, opened, received, protocols };
  }, [count, timeout]);
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
