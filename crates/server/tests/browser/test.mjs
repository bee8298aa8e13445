// The chat UI of `smollm3 serve` in headless Chromium (Debian's `chromium`, driven by playwright-core):
// over HTTP the page streams with real Server-Sent Events (ui/static/sse.js, EventSource transport).
// Run by `make test-browser`, which builds `smollm3` and installs both. It starts its own server on a
// free loopback port with fresh data and config folders and the SmolLM2 test model.
// Environment: SMOLLM3_BIN, SMOLLM3_TEST_MODEL, CHROMIUM (the browser binary).
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync, existsSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../../..");
const BIN = process.env.SMOLLM3_BIN || join(ROOT, "target/debug/smollm3");
const MODEL = process.env.SMOLLM3_TEST_MODEL || join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const LONG = "Write a very long story about a dragon who learns to count, with many chapters.";

let dir, proc, url, browser, log = "";

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

async function waitReady() {
  const deadline = Date.now() + 120_000;
  while (Date.now() < deadline) {
    if (proc.exitCode !== null) throw new Error("smollm3 serve exited:\n" + log);
    try {
      const r = await fetch(url + "/health");
      if (r.ok) return;
    } catch (_) {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error("smollm3 serve never became ready:\n" + log);
}

before(async () => {
  for (const p of [BIN, MODEL, CHROMIUM]) {
    assert.ok(existsSync(p), `${p} is missing (make test-browser builds and installs it)`);
  }
  dir = mkdtempSync(join(tmpdir(), "smollm3-browser-"));
  const port = await freePort();
  url = `http://127.0.0.1:${port}`;
  // Answers of at most 200 tokens: long enough to reload or stop mid-answer, short enough that a
  // test never waits long for one that is still running. Temperature 0, so each prompt's answer
  // is always the same: the LONG story runs to the 200-token limit (sampled at random it ended
  // early now and then, before the reload meant to interrupt it).
  mkdirSync(join(dir, "config"));
  writeFileSync(join(dir, "config", "settings.json"), JSON.stringify({ max_tokens: 200, temperature: 0 }));
  proc = spawn(BIN, ["serve", "--model", MODEL, "--port", String(port), "--context", "2048",
    "--data-dir", join(dir, "data"), "--config-dir", join(dir, "config")]);
  proc.stdout.on("data", (d) => (log += d));
  proc.stderr.on("data", (d) => (log += d));
  await waitReady();
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
});

after(async () => {
  if (browser) await browser.close();
  if (proc && proc.exitCode === null) {
    const exited = new Promise((r) => proc.once("exit", r));
    proc.kill("SIGTERM");
    await exited;
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

// Each test starts with the engine idle: an answer a test left running would delay the next.
afterEach(async () => {
  const deadline = Date.now() + 120_000;
  for (;;) {
    const health = await (await fetch(url + "/health")).json();
    if (health.queue === 0) return;
    assert.ok(Date.now() < deadline, `the engine stays busy: ${JSON.stringify(health)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
});

/** A fresh page that records browser errors; the test fails on any. */
async function open(path) {
  const page = await browser.newPage();
  page.errors = [];
  page.on("pageerror", (e) => page.errors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && page.errors.push(m.text()));
  await settled(page, () => page.goto(url + path));
  return page;
}

/** Runs `load` and waits until the page's news stream is open (its response began: the server has
 *  subscribed it) and no htmx request is in flight (the refresh sent on opening among them), so
 *  a click does not abort one. */
async function settled(page, load) {
  const opened = page.waitForResponse((r) => r.url().endsWith("/events"));
  await load();
  await opened;
  await page.waitForFunction(() => !document.querySelector(".htmx-request"));
}

/** Records, at each answer's `complete` frame, the text the stream built (before the stored
 *  message replaces it), keyed by message id. */
async function recordStreamedText(page) {
  await page.evaluate(() => {
    window.streamed = {};
    document.body.addEventListener("sse:complete", (e) => {
      const art = e.target;
      const target = art.querySelector("[sse-swap=token]");
      window.streamed[art.getAttribute("sse-message")] = art._smolSse.text.get(target) || "";
    });
  });
}

async function newChatAndSend(page, text) {
  await page.click("#new-chat");
  await page.waitForSelector("textarea[data-composer]");
  await page.fill("textarea[data-composer]", text);
  await page.press("textarea[data-composer]", "Enter");
  await page.waitForSelector("article.msg.assistant.streaming");
  return page.$eval("article.msg.assistant.streaming", (a) => a.getAttribute("sse-message"));
}

/** The streaming answer's text so far. */
function streamingText(page, mid) {
  return page.$eval(`#msg-${mid} [sse-swap=token]`, (t) => t.closest("article")._smolSse?.text.get(t) || "");
}

async function waitForText(page, mid, atLeast) {
  await page.waitForFunction(
    ([mid, n]) => {
      const t = document.querySelector(`#msg-${mid} [sse-swap=token]`);
      const a = t && t.closest("article");
      return a && a._smolSse && (a._smolSse.text.get(t) || "").length >= n;
    },
    [mid, atLeast],
    { timeout: 120_000 },
  );
}

/** The stored message once the stream is over (the `complete` frame fetched it). */
async function stored(page, mid, status) {
  const sel = `#msg-${mid}.status-${status}`;
  await page.waitForSelector(sel, { timeout: 300_000 });
  return page.$eval(`#raw-${mid}`, (e) => e.dataset.raw);
}

test("a message sent in the browser streams its answer token by token", async () => {
  const page = await open("/");
  await recordStreamedText(page);
  const mid = await newChatAndSend(page, "Tell me about the moon.");
  // Tokens arrive one frame at a time: the text is seen growing before the answer is stored.
  const lengths = new Set();
  while ((await page.$(`#msg-${mid}.streaming`)) !== null) {
    lengths.add((await streamingText(page, mid).catch(() => "")).length);
    await page.waitForTimeout(20);
  }
  const text = await stored(page, mid, "complete");
  assert.ok(text.length > 0);
  assert.ok([...lengths].filter((n) => n > 0 && n < text.length).length >= 2,
    `partial texts seen: ${[...lengths]}`);
  assert.equal((await page.evaluate(() => window.streamed))[mid].trim(), text.trim());
  assert.deepEqual(page.errors, []);
  await page.close();
});

test("a reload mid-answer resumes from the replay buffer without loss or duplication", async () => {
  const page = await open("/");
  const mid = await newChatAndSend(page, LONG);
  await waitForText(page, mid, 40);
  const cid = await page.$eval("form[data-composer-form]", (f) => f.dataset.chat);
  // The address bar follows the open chat, so a reload shows it again.
  assert.equal(new URL(page.url()).pathname, `/chats/${cid}`);
  await settled(page, () => page.reload());
  await recordStreamedText(page);
  const resumedAt = await page.$eval(`#msg-${mid}`, (a) => [a.getAttribute("sse-last-id"), a.className]);
  assert.ok(resumedAt[1].includes("streaming"), `the answer was still running at the reload: ${resumedAt}`);
  assert.ok(Number(resumedAt[0]) > 0, "the page was rendered with the text so far and its frame id");
  const text = await stored(page, mid, "complete");
  const streamed = (await page.evaluate(() => window.streamed))[mid];
  assert.equal(streamed.trim(), text.trim(), "the text before the reload plus the stream after it");
  assert.deepEqual(page.errors, []);
  await page.close();
});

test("Stop ends the answer and keeps what was written as interrupted", async () => {
  const page = await open("/");
  const mid = await newChatAndSend(page, LONG);
  await waitForText(page, mid, 20);
  await page.click("button.stop");
  const text = await stored(page, mid, "interrupted");
  assert.ok(text.length >= 20, text);
  assert.ok(await page.isVisible(`#msg-${mid} .note`));
  assert.deepEqual(page.errors, []);
  await page.close();
});

test("an answer waiting behind an API request shows its place, then its tokens", async () => {
  const page = await open("/");
  // An API client's streamed answer holds the engine: counting on at temperature 0 does not stop
  // early, and 4000 tokens last far longer than the steps below on any machine (200 could end
  // first on a fast one). The client's cancel ends it.
  const MAX = 4000;
  const api = await fetch(url + "/v1/completions", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: MODEL.split("/").pop().replace(/\.gguf$/, ""), prompt: "1, 2, 3, 4, 5, 6, 7, 8,",
      max_tokens: MAX, temperature: 0, stream: true }),
  });
  assert.equal(api.status, 200);
  const reader = api.body.getReader();
  let said = "";
  while (!said.includes('"text"')) {
    const { value, done } = await reader.read();
    assert.ok(!done, `the API answer ended before its first token: ${said}`);
    said += new TextDecoder().decode(value);
  }
  // A chat asks meanwhile: its placeholder says it waits, and for how many. Its answer is the
  // 200-token story, so it is still running when its first token shows (see below).
  const mid = await newChatAndSend(page, LONG);
  const waiting = `#msg-${mid} .waiting`;
  await page.waitForFunction((sel) => document.querySelector(sel)?.textContent === "Waiting for the model — 1 answer ahead",
    waiting, { timeout: 10_000 }).catch(async (e) => {
    const shown = await page.$eval(`#msg-${mid}`, (m) => m.outerHTML).catch(() => "(gone)");
    throw new Error(`no place shown: ${shown}\n${e}`);
  });
  // The client goes away (its answer stops within a token): the chat's turn, and its first token replaces the place.
  await reader.cancel();
  await waitForText(page, mid, 1);
  assert.equal(await page.evaluate((sel) => document.querySelector(sel)?.textContent || "", waiting), "",
    "the place is gone with the first token");
  // The engine's latest finished answer, while the chat's runs, is the API's: cancelled, short
  // of its limit (not run out in the background before the chat's turn came).
  const { last } = await (await fetch(url + "/health")).json();
  assert.equal(last?.finish, "cancelled", `the API answer was stopped: ${JSON.stringify(last)}`);
  assert.ok(last.completion_tokens < MAX, JSON.stringify(last));
  const text = await stored(page, mid, "complete");
  assert.ok(text.length > 0, await page.$eval(`#msg-${mid}`, (m) => m.outerHTML));
  assert.deepEqual(page.errors, []);
  await page.close();
});

test("the quick-chat page answers, and its chat opens in the main page", async () => {
  const page = await open("/quick");
  await page.fill("form.quick input[name=text]", "What is the capital of France?");
  await page.press("form.quick input[name=text]", "Enter");
  await page.waitForSelector("#quick-answer article.msg.assistant");
  const mid = await page.$eval("#quick-answer article.msg.assistant", (a) => a.id.slice("msg-".length));
  // Sent is sent: the field is cleared for the next question (it kept the text).
  await page.waitForFunction(() => document.querySelector("form.quick input[name=text]").value === "",
    null, { timeout: 10_000 });
  const text = await stored(page, mid, "complete");
  assert.ok(text.length > 0);
  await Promise.all([page.waitForURL(/\/chats\/\d+$/), page.click("text=Open in main window")]);
  assert.equal(await page.$eval(`#raw-${mid}`, (e) => e.dataset.raw), text);
  assert.deepEqual(page.errors, []);
  await page.close();
});

test("chats made in one page appear in another (one chat core)", async () => {
  const a = await open("/");
  const b = await open("/");
  const before = await b.$$eval("#chat-list .chat-item", (items) => items.length);
  await a.click("#new-chat");
  // The other page hears `chats-changed` over its /events stream and refreshes its list.
  await b.waitForFunction((n) => document.querySelectorAll("#chat-list .chat-item").length === n + 1, before,
    { timeout: 30_000 });
  assert.deepEqual([...a.errors, ...b.errors], []);
  await a.close();
  await b.close();
});

test("a path typed in the onboarding's import box survives the re-renders a download's progress causes", async () => {
  const page = await open("/");
  // A model is loaded here, so the page shows no onboarding: put one in, as the no-model banner does.
  await page.evaluate(() => {
    const slot = document.createElement("div");
    slot.id = "onboarding-slot";
    document.body.append(slot);
  });
  await page.evaluate(() => htmx.ajax("GET", "/models/onboarding", { target: "#onboarding-slot" }));
  await page.waitForSelector("#onboarding #import-path");
  await page.fill("#import-path", "/home/me/my-model.gguf");
  // What a download's progress does several times a second: the section fetches itself again.
  for (let i = 0; i < 3; i++) {
    const rerendered = page.waitForResponse((r) => r.url().endsWith("/models/onboarding"));
    await page.evaluate(() => htmx.trigger(document.body, "download-progress"));
    await rerendered;
    await page.waitForFunction(() => !document.querySelector(".htmx-request"));
  }
  assert.equal(await page.inputValue("#import-path"), "/home/me/my-model.gguf");
  assert.deepEqual(page.errors, []);
  await page.close();
});

test("code blocks are highlighted by their language and copied with one click", async () => {
  const page = await open("/");
  await page.click("#new-chat");
  await page.waitForSelector("textarea[data-composer]");
  // `/quote` streams a built-in passage with a ```rust block through the same renderer as answers.
  await page.fill("textarea[data-composer]", "/quote");
  await page.press("textarea[data-composer]", "Enter");
  const keyword = ".msg.assistant .md pre code.language-rust.hljs .hljs-keyword";
  await page.waitForSelector(keyword, { timeout: 60_000 });
  const words = await page.$$eval(keyword, (els) => els.map((e) => e.textContent));
  assert.ok(words.includes("fn") || words.includes("let"), `rust keywords marked: ${words}`);
  // The language module was loaded on demand, not with the page.
  const loaded = await page.evaluate(() =>
    performance.getEntriesByType("resource").map((r) => new URL(r.name).pathname)
      .filter((p) => p.startsWith("/vendor/highlight/languages/")));
  assert.deepEqual(loaded, ["/vendor/highlight/languages/rust.js"]);
  const pre = page.locator(".msg.assistant .md pre").last();
  await pre.hover();
  await pre.locator(".copy-code").click();
  await page.waitForFunction(() => [...document.querySelectorAll(".copy-code")].some((b) => b.textContent === "Copied"));
  assert.deepEqual(page.errors, []);
  await page.close();
});

test("keyboard shortcuts: new chat, search, stop", async () => {
  const page = await open("/");
  const count = () => page.$$eval("#chat-list .chat-item", (items) => items.length);
  const before = await count();
  await page.keyboard.press("Control+Shift+O");
  await page.waitForFunction((n) => document.querySelectorAll("#chat-list .chat-item").length === n + 1, before,
    { timeout: 30_000 });
  await page.waitForSelector("textarea[data-composer]");
  await page.keyboard.press("Control+K");
  assert.ok(await page.evaluate(() => document.activeElement.matches("input.search")), "Ctrl+K focuses search");
  await page.fill("textarea[data-composer]", LONG);
  await page.press("textarea[data-composer]", "Enter");
  await page.waitForSelector("article.msg.assistant.streaming");
  const mid = await page.$eval("article.msg.assistant.streaming", (a) => a.getAttribute("sse-message"));
  await waitForText(page, mid, 20);
  await page.keyboard.press("Escape");
  const text = await stored(page, mid, "interrupted");
  assert.ok(text.length >= 20, text);
  assert.deepEqual(page.errors, []);
  await page.close();
});

test("MCP servers in the settings: added as fields, refused beside the field, tools trusted, removed", async () => {
  const page = await open("/settings");
  const save = async () => {
    const saved = page.waitForResponse((r) => r.url().endsWith("/settings") && r.request().method() === "POST");
    await page.click("form.settings .actions button[type=submit]");
    await saved;
    await page.waitForFunction(() => !document.querySelector(".htmx-request"));
  };
  await page.click("#mcp-add");
  await page.waitForSelector("#mcp-entry-0 input[name=mcp_0_name]");
  await page.fill("input[name=mcp_0_name]", "demo server");
  await page.fill("input[name=mcp_0_command]", "python3");
  await page.fill("textarea[name=mcp_0_args]", join(ROOT, "crates/chat/tests/mcp_demo_server.py"));
  await page.fill("textarea[name=mcp_0_env]", "DEMO_GREETING=Adds two numbers.");
  await save();
  // The chat core's rule, said beside the name; nothing saved, what was typed stays.
  assert.match(await page.textContent("#mcp-0-name-error"), /only letters/);
  assert.equal(await page.inputValue("input[name=mcp_0_command]"), "python3");
  await page.fill("input[name=mcp_0_name]", "demo");
  await save();
  // Saved: the entry comes back with its card, which starts the server and lists its tools, each
  // with a box to trust it.
  await page.waitForSelector("input[name=mcp_0_trust_add]", { timeout: 30_000 });
  assert.equal(await page.textContent("#mcp-0-name-error"), "");
  assert.match(await page.textContent("#mcp-demo"), /Adds two numbers\./);
  await page.check("input[name=mcp_0_trust_add]");
  await save();
  await settled(page, () => page.reload());
  await page.waitForSelector("input[name=mcp_0_trust_add]", { timeout: 30_000 });
  assert.ok(await page.isChecked("input[name=mcp_0_trust_add]"), "trusted after a reload");
  assert.ok(!(await page.isChecked("input[name=mcp_0_trust_crash]")));
  assert.equal(await page.inputValue("textarea[name=mcp_0_env]"), "DEMO_GREETING=Adds two numbers.\n");
  // Removed from the form, then saved: gone.
  await page.click("#mcp-entry-0 button[data-remove-closest]");
  assert.equal(await page.$("#mcp-entry-0"), null);
  await save();
  await settled(page, () => page.reload());
  assert.equal(await page.$$eval(".mcp-entry", (e) => e.length), 0);
  assert.deepEqual(page.errors, []);
  await page.close();
});
