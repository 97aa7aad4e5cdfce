// Drives the playground in headless Chromium over the DevTools protocol (on a pipe, so no
// WebSocket library is needed): loads the page, fills in a prompt and settings, presses Denoise,
// records every status line the page shows while the canvas denoises, saves a screenshot midway
// (SCREENSHOT-midway.png), waits for the final text, and saves a screenshot of the end. Prints one JSON line with what it saw; exits non-zero on any failure.
//
// usage: node scripts/playground-check.mjs URL SCREENSHOT.png REQUEST.json [CHROMIUM]
//   REQUEST.json: {"prompt": ..., "max_tokens": ..., "steps": ..., "sampler": ...}
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [url, screenshot, requestPath, bin = "/usr/bin/chromium"] = process.argv.slice(2);
if (!url || !screenshot || !requestPath) {
  console.error("usage: node scripts/playground-check.mjs URL SCREENSHOT.png REQUEST.json [CHROMIUM]");
  process.exit(2);
}
const request = JSON.parse(readFileSync(requestPath, "utf8"));
const profile = mkdtempSync(join(tmpdir(), "dlm-chromium-"));
const chrome = spawn(bin, [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--disable-dev-shm-usage", `--user-data-dir=${profile}`, "--remote-debugging-pipe",
  "--window-size=1280,900", "about:blank",
], { stdio: ["ignore", "ignore", "pipe", "pipe", "pipe"] });
let chromeLog = "";
chrome.stdio[2].on("data", (d) => { chromeLog = (chromeLog + d).slice(-4000); });

function finish(code, message) {
  if (message) console.error(message);
  try { chrome.kill("SIGKILL"); } catch {}
  try { rmSync(profile, { recursive: true, force: true }); } catch {}
  process.exit(code);
}
const overall = setTimeout(() => finish(1, `timed out\n${chromeLog}`), 90_000);
chrome.on("exit", (code) => finish(1, `chromium exited early (${code})\n${chromeLog}`));

// The protocol: JSON messages, each ended by a NUL byte, fd 3 to the browser, fd 4 back.
let nextId = 1;
const pending = new Map();
const listeners = [];
let inbox = Buffer.alloc(0);
chrome.stdio[4].on("data", (chunk) => {
  inbox = Buffer.concat([inbox, chunk]);
  let end;
  while ((end = inbox.indexOf(0)) >= 0) {
    const msg = JSON.parse(inbox.subarray(0, end).toString("utf8"));
    inbox = inbox.subarray(end + 1);
    if (msg.id && pending.has(msg.id)) {
      const { resolve, reject } = pending.get(msg.id);
      pending.delete(msg.id);
      if (msg.error) reject(new Error(`${msg.error.message} (${msg.error.code})`));
      else resolve(msg.result);
    } else if (msg.method) {
      for (const l of listeners) l(msg);
    }
  }
});
function send(method, params = {}, sessionId) {
  const id = nextId++;
  chrome.stdio[3].write(JSON.stringify({ id, method, params, sessionId }) + "\0");
  return new Promise((resolve, reject) => pending.set(id, { resolve, reject }));
}
function once(method) {
  return new Promise((resolve) => listeners.push((m) => m.method === method && resolve(m.params)));
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

try {
  const { targetId } = await send("Target.createTarget", { url: "about:blank" });
  const { sessionId } = await send("Target.attachToTarget", { targetId, flatten: true });
  const page = (method, params) => send(method, params, sessionId);
  const evaluate = async (expression) => {
    const r = await page("Runtime.evaluate", { expression, returnByValue: true, awaitPromise: true });
    if (r.exceptionDetails) throw new Error(`page script failed: ${JSON.stringify(r.exceptionDetails)}`);
    return r.result.value;
  };
  await page("Page.enable");
  await page("Runtime.enable");
  await page("Emulation.setDeviceMetricsOverride", { width: 1280, height: 900, deviceScaleFactor: 1, mobile: false });
  const loaded = once("Page.loadEventFired");
  await page("Page.navigate", { url });
  await loaded;

  // Watch the status line and the canvas while the page denoises.
  await evaluate(`
    window.__seen = { statuses: [], maskedCounts: [] };
    new MutationObserver(() => {
      window.__seen.statuses.push(document.getElementById("status").textContent);
      window.__seen.maskedCounts.push(document.querySelectorAll("#canvas .m").length);
    }).observe(document.getElementById("status"), { childList: true, characterData: true, subtree: true });
    true`);
  const set = Object.entries(request)
    .map(([k, v]) => `document.getElementById(${JSON.stringify(k)}).value = ${JSON.stringify(String(v))};`)
    .join("\n");
  await evaluate(`${set}\ndocument.getElementById("run").click(); true`);

  // One screenshot midway, while masks are turning into tokens.
  const midway = screenshot.replace(/\.png$/, "") + "-midway.png";
  for (let i = 0; i < 600; i++) {
    const m = await evaluate(`document.getElementById("status").textContent.startsWith("step ") &&
      document.querySelectorAll("#canvas .m").length > 0`);
    if (m) {
      const shot = await page("Page.captureScreenshot", { format: "png" });
      writeFileSync(midway, Buffer.from(shot.data, "base64"));
      break;
    }
    await sleep(10);
  }

  let state;
  for (let i = 0; i < 600; i++) {
    state = await evaluate(`({
      done: document.getElementById("final").dataset.done === "1",
      error: document.getElementById("error").textContent,
      final: document.getElementById("final").textContent,
      status: document.getElementById("status").textContent,
      canvas: document.getElementById("canvas").textContent,
      seen: window.__seen,
    })`);
    if (state.done || state.error) break;
    await sleep(100);
  }
  if (state.error) throw new Error(`the page shows an error: ${state.error}`);
  if (!state.done) throw new Error(`no final text after 60 s; status: ${state.status}`);
  const shot = await page("Page.captureScreenshot", { format: "png" });
  writeFileSync(screenshot, Buffer.from(shot.data, "base64"));
  console.log(JSON.stringify({
    final: state.final, status: state.status, canvas: state.canvas,
    statuses: state.seen.statuses, masked_counts: state.seen.maskedCounts, screenshot, midway,
  }));
  clearTimeout(overall);
  await send("Browser.close").catch(() => {});
  chrome.removeAllListeners("exit");
  finish(0);
} catch (e) {
  finish(1, `${e.stack || e}\n--- chromium stderr ---\n${chromeLog}`);
}
