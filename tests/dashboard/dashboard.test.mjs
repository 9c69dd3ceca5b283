// The dashboard end to end: a real `sluice serve` on loopback, rules
// deployed with the real CLI, the page in Debian's Chromium driven by
// playwright-core (no browser is downloaded), axe-core for accessibility.
// Screenshots of each view go to $SLUICE_ARTIFACTS (default
// <target>/dashboard-artifacts).
//
// Run through scripts/test.sh, or alone:
//   cd tests/dashboard && npm ci && npm test
// with SLUICE_BIN (the sluice binary) and SLUICE_WASM_DIR (the built
// example components) when they are not in the default target directory.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync, mkdirSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';

const run = promisify(execFile);
const require = createRequire(import.meta.url);
const root = path.resolve(import.meta.dirname, '../..');
const target = process.env.CARGO_TARGET_DIR || path.join(root, 'target');
const bin = process.env.SLUICE_BIN || path.join(target, 'debug', 'sluice');
const wasmDir = process.env.SLUICE_WASM_DIR || path.join(target, 'wasm-guests', 'wasm32-wasip2', 'release');
const artifacts = process.env.SLUICE_ARTIFACTS || path.join(target, 'dashboard-artifacts');
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
const ADMIN = `dash-admin-${process.pid}`;

let work;
let server;
let url;
let browser;
const tenants = {};

/** An API call. */
async function call(method, p, token, body, type = 'application/json') {
  const r = await fetch(`${url}${p}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, ...(body ? { 'content-type': type } : {}) },
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await r.text();
  if (!r.ok) throw new Error(`${method} ${p}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/** Poll `fn` until it gives a truthy value (the server works in the
 * background; nothing here sleeps a fixed time). */
async function until(what, fn, ms = 30000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) { last = e; }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what} (last: ${last})`);
}

async function cli(...args) {
  const { stdout } = await run(bin, args, { env: { ...process.env, SLUICE_URL: url } });
  return stdout;
}

function manifest(name, count) {
  return `name = "${name}"
version = 1

[trigger.batch]
count = ${count}
window = "1h"
expire = "fire"

[limits]
fuel = 200_000_000
deadline = "2s"
memory = "32MiB"

[retry]
max_attempts = 1
`;
}

async function deploy(tenant, name, count = 2) {
  const file = path.join(work, `${tenant}-${name}.toml`);
  writeFileSync(file, manifest(name, count));
  return cli('deploy', path.join(wasmDir, 'pr_digest.wasm'), '--manifest', file, '--token', tenants[tenant].token);
}

function merged(repo, number, extra = {}) {
  return { source: 'github', kind: 'pull_request.merged', payload: { repo, ...(number ? { number } : {}), title: `PR ${number}`, ...extra } };
}

async function emit(tenant, events) {
  return call('POST', '/v1/events', tenants[tenant].token, events.map((e) => JSON.stringify(e)).join('\n'), 'application/x-ndjson');
}

const pageErrors = [];

async function newPage(viewport = { width: 1280, height: 900 }) {
  const page = await browser.newPage({ viewport });
  page.on('pageerror', (e) => pageErrors.push(e.message));
  // A refused token's 401 is expected (the page signs out); anything else
  // logged as an error is not.
  page.on('console', (m) => {
    const expected = /status of 401/.test(m.text())
      || (/status of 404/.test(m.text()) && m.location().url.endsWith('/v1/cluster'));
    if (m.type() === 'error' && !expected) pageErrors.push(`${m.text()} (${m.location().url})`);
  });
  return page;
}

async function signIn(page, tenant) {
  await page.goto(`${url}/`);
  await page.getByLabel('Token').fill(tenant === 'admin' ? ADMIN : tenants[tenant].token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: tenant === 'admin' ? 'Tenants and nodes' : 'Rules', exact: true }).waitFor();
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(artifacts, `${name}.png`), fullPage: true });
}

/** axe-core on the page as it is: no serious or critical violation. */
async function accessible(page, view) {
  // Evaluated through the debugging protocol: the page's content policy
  // (rightly) refuses inline scripts.
  await page.evaluate(readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8'));
  const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  assert.deepEqual(bad.map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(' ')).join(', ')})`), [],
    `accessibility of ${view}`);
}

before(async () => {
  for (const [what, p] of [['the sluice binary', bin], ['the example components', path.join(wasmDir, 'pr_digest.wasm')], ['chromium', chromiumPath]]) {
    if (!existsSync(p)) throw new Error(`${what} is missing at ${p} (scripts/test.sh builds and installs it)`);
  }
  mkdirSync(artifacts, { recursive: true });
  work = mkdtempSync(path.join(tmpdir(), 'sluice-dashboard-'));
  server = spawn(bin, ['serve', '--db', path.join(work, 'sluice.db'), '--listen', '127.0.0.1:0', '--heartbeat', '1s'], {
    env: { ...process.env, SLUICE_ADMIN_TOKEN: ADMIN, RUST_LOG: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const log = (await import('node:fs')).createWriteStream(path.join(artifacts, 'server.log'));
  server.stderr.pipe(log);
  url = await new Promise((resolve, reject) => {
    let out = '';
    server.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/listening on (http:\/\/\S+)/);
      if (m) resolve(m[1]);
    });
    server.on('exit', (code) => reject(new Error(`sluice serve exited with ${code}`)));
  });
  for (const name of ['acme', 'other']) {
    const t = await call('POST', '/v1/tenants', ADMIN, { name });
    tenants[name] = { token: t.token.token, tokenId: t.token.id };
  }
  await deploy('acme', 'pr-digest');
  await deploy('other', 'other-secret-rule');
  browser = await chromium.launch({
    executablePath: chromiumPath,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update'],
  });
});

after(async () => {
  await browser?.close();
  assert.deepEqual(pageErrors, [], 'errors in the page');
  if (server && server.exitCode === null) {
    server.kill('SIGTERM');
    await new Promise((r) => server.on('exit', r));
  }
  if (work) rmSync(work, { recursive: true, force: true });
});

test('the page and its assets come from the binary, with a strict content policy', async () => {
  const r = await fetch(`${url}/`);
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-security-policy'), /default-src 'none'/);
  const html = await r.text();
  for (const asset of html.matchAll(/\/ui\/[^"]+/g)) {
    const a = await fetch(`${url}${asset[0]}`);
    assert.equal(a.status, 200, asset[0]);
  }
  assert.equal((await fetch(`${url}/ui/nope.js`)).status, 404);
});

test('sign in, a fire appears live in the timeline, and its batch opens on click', async () => {
  const page = await newPage();
  await page.goto(`${url}/`);
  await shot(page, 'sign-in');
  await accessible(page, 'sign-in');
  await page.getByLabel('Token').fill('sluice_nope_nope');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByText(/Sign-in refused/).waitFor();
  await signIn(page, 'acme');
  await page.getByRole('link', { name: 'pr-digest', exact: true }).waitFor();
  await shot(page, 'rules');
  await accessible(page, 'rules');

  await page.getByRole('link', { name: 'Timeline', exact: true }).click();
  await page.getByText(/^live ·/).waitFor();
  await emit('acme', [merged('acme/api', 101), merged('acme/api', 102)]);
  const fire = page.getByRole('link', { name: /fire\.completed · pr-digest · acme\/api/ });
  await fire.waitFor();
  await shot(page, 'timeline');
  await accessible(page, 'timeline');
  await fire.click();
  await page.getByRole('heading', { name: /^Fire f_/ }).waitFor();
  await page.getByRole('heading', { name: 'Batch (2 events)' }).waitFor();
  assert.equal(await page.getByRole('cell', { name: 'pull_request.merged' }).count(), 2);
  await page.getByRole('heading', { name: 'Outputs (1)' }).waitFor();
  assert.match(page.url(), /#\/fires\/f_[0-9a-f]+$/);
  await shot(page, 'fire');
  await accessible(page, 'fire');

  // The deep link opens the same fire in a new tab once signed in there.
  const link = page.url();
  const other = await newPage();
  await other.goto(link);
  await other.getByLabel('Token').fill(tenants.acme.token);
  await other.getByRole('button', { name: 'Sign in' }).click();
  await other.getByRole('heading', { name: 'Batch (2 events)' }).waitFor();
  await other.close();

  // The rule's own view: trigger in words, open partitions, history.
  await emit('acme', [merged('acme/ops', 7)]);
  await until('an open window', async () => (await call('GET', '/v1/rules/pr-digest', tenants.acme.token)).partitions === 1);
  await page.goto(`${url}/#/rules/pr-digest`);
  await page.getByText(/batches of 2 per partition/).waitFor();
  await page.getByRole('heading', { name: 'Open partitions' }).waitFor();
  await page.getByRole('rowheader', { name: 'acme/ops' }).waitFor();
  await page.getByText(/^1 event since /).waitFor();
  await shot(page, 'rule');
  await accessible(page, 'rule');
  await page.close();
});

test('a failing rule\'s dead letter is re-driven from the page', async () => {
  const page = await newPage();
  await signIn(page, 'acme');
  // Merges without a number: the handler refuses them (fatal), so the
  // fire is dead-lettered at once.
  await emit('acme', [merged('acme/web', null), merged('acme/web', null)]);
  const dead = await until('a dead letter', async () => {
    const d = await call('GET', '/v1/fires?status=dead', tenants.acme.token);
    return d.length === 1 && d[0];
  });
  await page.getByRole('link', { name: 'Dead letters', exact: true }).click();
  await page.getByRole('link', { name: dead.fire_id }).waitFor();
  await shot(page, 'dead-letters');
  await accessible(page, 'dead letters');
  await page.getByRole('button', { name: `Re-drive ${dead.fire_id}` }).click();
  await page.getByText(`Fire ${dead.fire_id} re-driven`).waitFor();
  // It ran again: a second round of attempts is recorded (and, failing
  // again, it is back in the list).
  const fire = await until('the re-driven attempt', async () => {
    const f = await call('GET', `/v1/fires/${dead.fire_id}`, tenants.acme.token);
    return f.records.filter((r) => r.kind === 'fire.dead_lettered').length === 2 && f;
  });
  assert.ok(fire.records.some((r) => r.id.includes('.r1.')), 'the second round has records of its own');
  assert.match(fire.records.at(-1).payload.error, /no pull request number/);

  // The fire's page shows the guest's error for each attempt.
  await page.goto(`${url}/#/fires/${dead.fire_id}`);
  await page.getByText('fire.dead_lettered').first().waitFor();
  await page.getByRole('button', { name: `Discard ${dead.fire_id}` }).click();
  await page.getByRole('button', { name: `Confirm discard of ${dead.fire_id}` }).click();
  await page.getByText(`Dead letter ${dead.fire_id} discarded.`).waitFor();
  assert.deepEqual(await call('GET', '/v1/fires?status=dead', tenants.acme.token), []);
  await page.close();
});

test('pause and resume from the page change the rule\'s status', async () => {
  const page = await newPage();
  await signIn(page, 'acme');
  await page.getByRole('button', { name: 'Pause pr-digest' }).click();
  await page.getByText('Rule pr-digest paused.').waitFor();
  await page.getByRole('button', { name: 'Resume pr-digest' }).waitFor();
  assert.equal((await call('GET', '/v1/rules/pr-digest', tenants.acme.token)).status, 'paused');
  assert.equal(await page.getByText('paused', { exact: true }).count(), 1, 'said in words, not only in colour');
  await shot(page, 'rules-paused');
  await page.getByRole('button', { name: 'Resume pr-digest' }).click();
  await page.getByText('Rule pr-digest resumed.').waitFor();
  await page.getByRole('button', { name: 'Pause pr-digest' }).waitFor();
  assert.equal((await call('GET', '/v1/rules/pr-digest', tenants.acme.token)).status, 'active');
  await page.close();
});

test('events, charts and the admin view', async () => {
  const page = await newPage();
  await signIn(page, 'acme');
  await page.getByRole('link', { name: 'Events', exact: true }).click();
  await page.getByLabel('Kind').fill('pull_request.merged');
  await page.getByRole('button', { name: 'Search' }).click();
  await page.getByText(/\d+ events?, oldest first/).waitFor();
  assert.match(page.url(), /kind=pull_request.merged/);
  await shot(page, 'events');
  await accessible(page, 'events');

  await page.getByRole('link', { name: 'Charts', exact: true }).click();
  await page.getByRole('heading', { name: /Charts/ }).waitFor();
  await page.locator('.uplot').first().waitFor();
  assert.equal(await page.locator('.uplot').count(), 4);
  await shot(page, 'charts');
  await accessible(page, 'charts');
  const stats = await call('GET', '/v1/stats?minutes=5', tenants.acme.token);
  assert.ok(stats.ingest.reduce((a, b) => a + b, 0) >= 4, 'ingest counted');
  assert.ok(stats.rules.find((r) => r.rule === 'pr-digest').fires.reduce((a, b) => a + b, 0) >= 1);
  await page.close();

  const admin = await newPage();
  await signIn(admin, 'admin');
  await admin.getByRole('rowheader', { name: 'acme' }).waitFor();
  await admin.getByText(/One node:/).waitFor();
  await shot(admin, 'admin');
  await accessible(admin, 'admin');
  await admin.close();
});

test('the page fits a phone', async () => {
  const page = await newPage({ width: 390, height: 844 });
  await signIn(page, 'acme');
  for (const [hash, name] of [['#/rules', 'rules'], ['#/timeline', 'timeline'], ['#/dead', 'dead']]) {
    await page.goto(`${url}/${hash}`);
    await page.locator('main h1').waitFor();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, `${name} scrolls sideways on a phone by ${overflow}px`);
    await shot(page, `phone-${name}`);
  }
  await page.close();
});

test('keyboard: keys move between views and rows', async () => {
  const page = await newPage();
  await signIn(page, 'acme');
  await page.keyboard.press('t');
  await page.getByRole('heading', { name: 'Live timeline' }).waitFor();
  await page.keyboard.press('d');
  await page.getByRole('heading', { name: 'Dead letters' }).waitFor();
  await page.keyboard.press('r');
  await page.getByRole('link', { name: 'pr-digest', exact: true }).waitFor();
  await page.keyboard.press('j');
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'pr-digest');
  await page.keyboard.press('Enter');
  await page.getByText(/batches of 2 per partition/).waitFor();
  await page.close();
});

test('at 10 000 events a second the timeline renders what is visible and says what it skipped', async () => {
  const page = await newPage();
  await signIn(page, 'acme');
  await page.goto(`${url}/#/timeline?source=load`);
  await page.getByText(/^live ·/).waitFor();
  const total = 20000;
  const started = Date.now();
  for (let i = 0; i < total; i += 2000) {
    const batch = [];
    for (let j = i; j < i + 2000; j++) batch.push({ source: 'load', kind: 'load.tick', payload: { n: j } });
    await emit('acme', batch);
  }
  const seconds = (Date.now() - started) / 1000;
  await page.getByText(`received ${total.toLocaleString('en-US')}`).waitFor({ timeout: 60000 });
  const counts = await page.locator('.counts').textContent();
  assert.match(counts, /skipped \(the newest 5,000 are kept\)/);
  const rows = await page.locator('.timeline [data-row]').count();
  assert.ok(rows > 0 && rows < 100, `${rows} rows in the DOM`);
  // Still answering: the stream pauses and resumes at once.
  await page.getByRole('button', { name: 'Pause stream' }).click();
  await page.getByText(/paused, 0 waiting/).waitFor();
  await page.getByRole('button', { name: 'Resume stream' }).click();
  await shot(page, 'timeline-load');
  console.log(`# sent ${total} events in ${seconds.toFixed(1)} s (${Math.round(total / seconds)} events/s)`);
  await page.close();
});

test('tenants see nothing of each other, and a revoked token signs the page out', async () => {
  await emit('other', [merged('other/secret', 1), merged('other/secret', 2), { source: 'other', kind: 'secret.kind', payload: {} }]);
  const page = await newPage();
  await signIn(page, 'acme');
  await page.getByRole('link', { name: 'pr-digest', exact: true }).waitFor();
  assert.equal(await page.getByText('other-secret-rule').count(), 0);
  await page.goto(`${url}/#/timeline?from=0`);
  // The whole log replays from seq 0: acme's marker comes after other's
  // events, so once it shows, anything of other's would have too.
  await emit('acme', [{ source: 'marker', kind: 'acme.marker', payload: {} }]);
  await page.getByText(/acme\.marker/).first().waitFor({ timeout: 60000 });
  const text = await page.locator('main').textContent();
  assert.ok(!text.includes('secret'), 'no trace of the other tenant in the timeline');
  const ownFires = await call('GET', '/v1/fires?status=completed', tenants.acme.token);
  assert.ok(ownFires.every((f) => f.rule === 'pr-digest'));
  await page.goto(`${url}/#/events`);
  await page.getByText(/oldest first/).waitFor();
  assert.ok(!(await page.locator('main').textContent()).includes('secret'));

  await call('DELETE', `/v1/tenants/acme/tokens/${tenants.acme.tokenId}`, ADMIN);
  await page.getByText('The token is unknown or was revoked').waitFor({ timeout: 15000 });
  await page.getByLabel('Token').waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem('sluice.token')), null);
  await shot(page, 'signed-out');
  await page.close();
});
