// Runs a browser bundle in headless Chromium in a page of the server at URL, and prints what
// the bundle left in `window.bundleResult` as one JSON line.
//
//   node run-bundle.mjs URL BUNDLE_FILE
import { readFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const [url, bundleFile] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
try {
  const page = await browser.newPage();
  page.on('pageerror', (error) => console.error(`page error: ${error}`));
  page.on('console', (message) => console.error(`page: ${message.text()}`));
  await page.goto(`${url}/v1/health`);
  await page.addScriptTag({ content: readFileSync(bundleFile, 'utf8') });
  const result = await page.evaluate(() => window.bundleResult);
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
