// Drives the swarm monitor page in headless Chromium and reports what it saw, one JSON
// object per line on stdout:
//   {"step":"servers"}  the page shows 3 servers and full coverage;
//   {"step":"chat"}     the chat box streamed an answer;
//   {"step":"kill"}     the caller should kill a server now and then write a line to stdin;
//   {"step":"gone"}     the page shows 2 servers, `ms` after that line came;
//   {"step":"end"}      console errors and requests that left the host, if any.
//
//   node monitor-check.mjs http://127.0.0.1:PORT
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const url = process.argv[2];
const say = (o) => console.log(JSON.stringify(o));
const input = createInterface({ input: process.stdin });
const lines = input[Symbol.asyncIterator]();

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const page = await browser.newPage();
  const errors = [];
  const offhost = [];
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("request", (r) => {
    const u = new URL(r.url());
    if (!["127.0.0.1", "localhost", "[::1]"].includes(u.hostname) && u.protocol !== "data:") offhost.push(r.url());
  });
  await page.goto(url);
  await page.waitForFunction(() => document.querySelectorAll("tr.server").length === 3
    && document.querySelector('[data-coverage="full"]') !== null, null, { timeout: 60000 });
  const cells = await page.locator(".map td.held").count();
  say({ step: "servers", count: await page.locator("tr.server").count(), held_cells: cells });

  await page.fill("#chat-input", "Say hello in one word.");
  await page.click("#chat-send");
  const answer = page.locator('.assistant[data-done="true"]');
  await answer.waitFor({ timeout: 120000 });
  say({ step: "chat", text: await answer.textContent(), error: (await answer.getAttribute("class")).includes("error") });

  say({ step: "kill" });
  await lines.next();
  const t0 = Date.now();
  await page.waitForFunction(() => document.querySelectorAll("tr.server").length === 2, null, { timeout: 30000 });
  say({ step: "gone", ms: Date.now() - t0, coverage: await page.getAttribute("[data-coverage]", "data-coverage") });
  say({ step: "end", console_errors: errors, offhost });
} finally {
  await browser.close();
  input.close();
}
