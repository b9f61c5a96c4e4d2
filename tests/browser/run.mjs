// Drives Converse.js (from npm) in Debian's headless Chromium: log in over XMPP WebSocket, send a
// message to a TCP client through the chat box, and wait until the reply shows in the page.
// Usage: node run.mjs <wss url> <jid> <password> <peer jid> <text to send> <reply to wait for>
// DEBUG=1 shows the page's whole console (Converse at log level debug) and failed requests.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const [ws, jid, password, peer, text, reply] = process.argv.slice(2);
const root = path.dirname(fileURLToPath(import.meta.url));
const types = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.json': 'application/json', '.wasm': 'application/wasm', '.svg': 'image/svg+xml', '.woff2': 'font/woff2', '.woff': 'font/woff', '.ttf': 'font/ttf' };
const server = http.createServer((req, res) => {
  const file = path.join(root, decodeURIComponent(new URL(req.url, 'http://x').pathname));
  if (!file.startsWith(root) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
    res.writeHead(404); res.end(); return;
  }
  res.writeHead(200, { 'content-type': types[path.extname(file)] || 'application/octet-stream' });
  fs.createReadStream(file).pipe(res);
});
await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
const page_url = `http://127.0.0.1:${server.address().port}/page.html?` + new URLSearchParams({ ws, jid, password, loglevel: process.env.DEBUG ? 'debug' : 'warn' });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    // The test server's certificate is self-signed.
    '--ignore-certificate-errors'],
});
let code = 1;
try {
  const page = await browser.newPage();
  page.on('console', (m) => { if (m.type() === 'error' || process.env.DEBUG) console.error('page:', m.type(), m.text()); });
  page.on('pageerror', (e) => console.error('page error:', e.message));
  if (process.env.DEBUG) {
    page.on('response', (r) => { if (r.status() >= 400) console.error('HTTP', r.status(), r.url()); });
  }
  await page.goto(page_url);
  await page.waitForFunction(() => window.rookeryConnected === true, null, { timeout: 30000 });
  console.log('LOGGED IN');
  await page.evaluate((peer) => window.rookery.api.chats.open(peer, {}, true), peer);
  const box = page.locator('textarea.chat-textarea');
  await box.waitFor({ timeout: 30000 });
  await box.fill(text);
  await box.press('Enter');
  console.log('SENT');
  await page.getByText(reply).first().waitFor({ timeout: 30000 });
  console.log('REPLY SHOWN');
  code = 0;
} catch (e) {
  console.error('FAILED:', e.message);
} finally {
  await browser.close();
  server.close();
}
process.exit(code);
