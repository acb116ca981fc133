// The web dashboard (web/, served at `/`) in headless Chromium, driven by
// playwright-core against the real daemon and gateway. Screenshots are
// left in tests/js/screenshots/ for a person to look at.
'use strict';
const test = require('node:test');
const { before, after } = test;
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { Daemon, BIN, WAIT_MS, within, gate } = require('./helpers');

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SHOTS = path.join(__dirname, 'screenshots');
const READ_ONLY = 'read-only-token-for-the-dashboard-test';

let browser;
let d;

before(async () => {
  assert.ok(fs.existsSync(CHROMIUM), `the dashboard tests need Chromium at ${CHROMIUM} (tests/setup.sh installs it)`);
  const { chromium } = require('playwright-core');
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // This machine's network is closed: without these Chromium keeps
    // trying Google's hosts, many connections at a time.
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: WAIT_MS * 3,
  });
  fs.mkdirSync(SHOTS, { recursive: true });
  d = await Daemon.start(`[stream]\nread_only_tokens = ["${READ_ONLY}"]\n`);
});

after(async () => {
  try {
    if (browser) await within('the browser to close', browser.close());
  } finally {
    if (d) await d.stop();
  }
});

// A fresh page (its own session storage), logged in with `token` by fragment.
async function open(target, token = target.token, query = '') {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => m.type() === 'error' && errors.push(m.text()));
  await page.goto(`${target.url}/${query}#token=${encodeURIComponent(token)}`);
  page.errors = errors;
  return page;
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: false });
}

// The visible text of the log rows, in order.
async function logLines(page) {
  return page.$$eval('.log .row.line .text', (els) => els.map((e) => e.textContent));
}

test('login by fragment: the token leaves the URL, stays in session storage, and a wrong one gets the form', async () => {
  const page = await open(d);
  await page.waitForSelector('.live.live', { timeout: WAIT_MS });
  assert.equal(new URL(page.url()).hash, '', 'the fragment is removed');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('runtap.token')), d.token);
  assert.ok(!page.url().includes(d.token));
  const bad = await open(d, 'wrong-token');
  await bad.waitForSelector('form.login .error:not([hidden])', { timeout: WAIT_MS });
  assert.match(await bad.textContent('form.login .error'), /refused/);
  await bad.fill('form.login input', d.token);
  await bad.click('form.login button');
  await bad.waitForSelector('.live.live', { timeout: WAIT_MS });
  assert.deepEqual(page.errors, []);
});

test('a run launched after the page opened appears within a second, with its status live', async () => {
  const page = await open(d);
  await page.waitForSelector('.live.live', { timeout: WAIT_MS });
  const g = gate(d.dir, 'late-gate');
  const launched = d.run('run', '--detach', '--id', 'late-run', '--', 'sh', '-c', `read x < ${g.file}; exit 3`);
  assert.equal(launched.status, 0, launched.stderr);
  await page.waitForSelector('tr.run[data-run="late-run"] .badge.running', { timeout: 1000 });
  assert.match(await page.textContent('tr.run[data-run="late-run"] .command'), /read x/);
  await g.open();
  await page.waitForSelector('tr.run[data-run="late-run"] .badge.failed', { timeout: WAIT_MS });
  assert.equal((await page.textContent('tr.run[data-run="late-run"] .exit')).trim(), '3');
  await page.fill('.f-search', 'no-such-run');
  await page.waitForSelector('tr.run[data-run="late-run"]', { state: 'detached', timeout: WAIT_MS });
  await page.fill('.f-search', 'late');
  await page.selectOption('.f-status', 'failed');
  await page.waitForSelector('tr.run[data-run="late-run"]', { timeout: WAIT_MS });
  await page.selectOption('.f-status', 'running');
  await page.waitForSelector('tr.run[data-run="late-run"]', { state: 'detached', timeout: WAIT_MS });
  await page.selectOption('.f-status', '');
  await page.fill('.f-search', '');
  await shot(page, 'runs');
});

test('a run page: live lines, red is red, a \\r progress line is one line, steps collapse, the raw log downloads', async () => {
  const g = gate(d.dir, 'live-gate');
  const script = [
    `printf '\\033[31mred text\\033[0m plain\\n'`,
    `${BIN} step start build --name Build`,
    `echo compiling; echo 'warning: x' >&2`,
    `printf '  0%%\\r 50%%\\r100%% done\\n'`,
    `${BIN} progress 0.5 --stage build halfway`,
    `${BIN} step end build`,
    `read x < ${g.file}`,
    `echo after the gate`,
  ].join('; ');
  const done = d.spawnRun('run', '--id', 'colours', '--', 'sh', '-c', script);
  const page = await open(d, d.token, '?run=colours');
  await page.waitForSelector('.log .row.step[data-step="build"]', { timeout: WAIT_MS });
  await page.waitForFunction(() => [...document.querySelectorAll('.log .row.line .text')].some((e) => e.textContent === '100% done'), null, { timeout: WAIT_MS });
  const color = await page.$eval('.log .row.line .text span.f1', (e) => getComputedStyle(e).color);
  assert.equal(color, 'rgb(229, 83, 75)', 'ESC[31m is the theme red');
  const lines = await logLines(page);
  assert.equal(lines.filter((l) => l.includes('%')).length, 1, `one progress line: ${JSON.stringify(lines)}`);
  assert.ok(await page.$('.log .row.line .text span.E'), 'stderr is marked');
  await page.waitForSelector('.progress:not([hidden])', { timeout: WAIT_MS });
  assert.match(await page.textContent('.progress .stage'), /50% · build · halfway/);
  assert.ok(!(await logLines(page)).includes('after the gate'));
  await g.open();
  await page.waitForFunction(() => [...document.querySelectorAll('.log .row.line .text')].some((e) => e.textContent === 'after the gate'), null, { timeout: WAIT_MS });
  await page.waitForSelector('.run-head .badge.succeeded', { timeout: WAIT_MS });
  assert.equal(await done, 0);
  assert.match(await page.textContent('.log .row.step[data-step="build"] .step-status'), /success · \d/);
  await shot(page, 'run');

  await page.click('.log .row.step[data-step="build"] .toggle');
  await page.waitForFunction(() => ![...document.querySelectorAll('.log .row.line .text')].some((e) => e.textContent === 'compiling'), null, { timeout: WAIT_MS });
  assert.ok((await logLines(page)).includes('after the gate'), 'lines outside the step stay');
  await page.click('.log .row.step[data-step="build"] .toggle');
  await page.waitForFunction(() => [...document.querySelectorAll('.log .row.line .text')].some((e) => e.textContent === 'compiling'), null, { timeout: WAIT_MS });

  const [download] = await Promise.all([page.waitForEvent('download', { timeout: WAIT_MS }), page.click('text=Download log')]);
  const bytes = fs.readFileSync(await download.path(), 'utf8');
  const journaled = d.journal('colours').filter((e) => e.type === 'stdout' || e.type === 'stderr')
    .map((e) => (e.encoding === 'base64' ? Buffer.from(e.data, 'base64').toString('utf8') : e.data)).join('');
  assert.equal(bytes, journaled, 'the download is the output, in journal order');
  assert.match(bytes, /\x1b\[31mred text\x1b\[0m plain\n/);
  assert.match(bytes, /warning: x\n/);
  assert.deepEqual(page.errors, []);
});

test('a 100 000-line run scrolls to its last line and keeps few rows in the DOM; #L links mark a line', async () => {
  const out = d.run('run', '--id', 'big', '--', 'seq', '1', '100000');
  assert.equal(out.status, 0);
  const t0 = Date.now();
  const page = await open(d, d.token, '?run=big');
  await page.waitForSelector('.log .row.line[data-line="100000"]', { timeout: WAIT_MS });
  const ms = Date.now() - t0;
  console.log(`# 100 000-line run: last line shown ${ms} ms after navigation`);
  const inView = await page.$eval('.log .row.line[data-line="100000"]', (e) => {
    const r = e.getBoundingClientRect();
    const box = document.querySelector('.log').getBoundingClientRect();
    return r.top >= box.top && r.bottom <= box.bottom + 1 && e.textContent.endsWith('100000');
  });
  assert.ok(inView, 'the last line is in view');
  const rows = await page.$$eval('.log .row', (els) => els.length);
  assert.ok(rows < 200, `only the rows in view are rendered (${rows})`);
  await shot(page, 'big');
  await page.click('.log .row.line[data-line="99990"] a.no');
  await page.waitForSelector('.log .row.line.hl[data-line="99990"]', { timeout: WAIT_MS });
  const linked = await open(d, d.token, '?run=big');
  await linked.evaluate(() => { location.hash = '#L120'; });
  await linked.waitForSelector('.log .row.line.hl[data-line="120"]', { timeout: WAIT_MS });
  assert.equal(await linked.textContent('.log .row.line.hl[data-line="120"] .text'), '120');
});

test('the log follows the tail until the user scrolls up, and Follow brings it back', async () => {
  const g = gate(d.dir, 'follow-gate');
  const done = d.spawnRun('run', '--id', 'tail', '--', 'sh', '-c', `seq 1 300; read x < ${g.file}; seq 301 600`);
  const page = await open(d, d.token, '?run=tail');
  await page.waitForSelector('.log .row.line[data-line="300"]', { timeout: WAIT_MS });
  assert.equal(await page.isVisible('button.follow'), false, 'following: no Follow button');
  await page.hover('.log');
  await page.mouse.wheel(0, -2000);
  await page.waitForSelector('button.follow:not([hidden])', { timeout: WAIT_MS });
  const top = await page.$eval('.log', (e) => e.scrollTop);
  await g.open();
  await page.waitForSelector('.run-head .badge.succeeded', { timeout: WAIT_MS });
  assert.equal(await done, 0);
  await page.waitForFunction(() => document.querySelector('.log-spacer').style.height === `${600 * 18}px`, null, { timeout: WAIT_MS });
  assert.equal(await page.$eval('.log', (e) => e.scrollTop), top, 'new lines do not pull the view down');
  assert.equal(await page.$('.log .row.line[data-line="600"]'), null);
  await page.click('button.follow');
  await page.waitForSelector('.log .row.line[data-line="600"]', { timeout: WAIT_MS });
  assert.equal(await page.isVisible('button.follow'), false);
});

test('cancel asks first, then the run ends cancelled; a read-only token sees no cancel button', async () => {
  const done = d.spawnRun('run', '--id', 'long', '--', 'sleep', '60');
  const ro = await open(d, READ_ONLY, '?run=long');
  await ro.waitForSelector('.run-head .badge.running', { timeout: WAIT_MS });
  assert.equal(await ro.isVisible('button.cancel'), false);
  assert.match(await ro.textContent('#who'), /read only/);

  const page = await open(d, d.token, '?run=long');
  await page.waitForSelector('.run-head .badge.running', { timeout: WAIT_MS });
  let asked = '';
  page.once('dialog', (dialog) => { asked = dialog.message(); dialog.dismiss(); });
  await page.click('button.cancel');
  await within('the dialog', (async () => { while (!asked) await new Promise((r) => setTimeout(r, 20)); })());
  assert.match(asked, /Cancel run long\?/);
  assert.equal(await page.textContent('.run-head .badge'), 'running', 'dismissed: nothing happens');
  page.once('dialog', (dialog) => dialog.accept());
  await page.click('button.cancel');
  await page.waitForSelector('.run-head .badge.cancelled', { timeout: WAIT_MS });
  await page.waitForSelector('.final.cancelled', { timeout: WAIT_MS });
  assert.equal(await page.isVisible('button.cancel'), false);
  await ro.waitForSelector('.run-head .badge.cancelled', { timeout: WAIT_MS });
  assert.notEqual(await done, 0);
});

// A gateway and two daemons forwarding to it.
async function startGateway() {
  const g = { dir: fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'runtap-gw-')), hosts: [] };
  g.state = path.join(g.dir, 'state');
  g.proc = spawn(BIN, ['gateway', '--state-dir', g.state, '--listen', '127.0.0.1:0'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  g.addr = await within('the gateway ready line', new Promise((resolve, reject) => {
    g.proc.stderr.setEncoding('utf8');
    g.proc.stderr.on('data', (c) => {
      log += c;
      const m = log.replace(/\x1b\[[0-9;]*m/g, '').match(/runtap gateway ready.*listen=(\S+)/);
      if (m) resolve(m[1]);
    });
    g.proc.on('exit', (code) => reject(new Error(`gateway exited (${code}):\n${log}`)));
  }));
  g.url = `http://${g.addr}`;
  g.token = fs.readFileSync(path.join(g.state, 'token'), 'utf8').trim();
  const agent = path.join(g.state, 'agent-token');
  for (const host of ['alpha', 'beta']) {
    const cfg = `[upstream]\nurl = "ws://${g.addr}"\nhost_id = "${host}"\ntoken_file = "${agent}"\n`;
    g.hosts.push(await Daemon.start(cfg));
  }
  g.stop = async () => {
    for (const h of g.hosts) await h.stop();
    const exited = new Promise((r) => g.proc.on('exit', r));
    g.proc.kill('SIGTERM');
    await within('the gateway to stop', exited);
    fs.rmSync(g.dir, { recursive: true, force: true });
  };
  return g;
}

test('the gateway page shows both hosts, connected, and a run from each', async () => {
  const g = await startGateway();
  try {
    const page = await open(g);
    await page.waitForSelector('.hosts .host-item.up[data-host="alpha"]', { timeout: WAIT_MS });
    await page.waitForSelector('.hosts .host-item.up[data-host="beta"]', { timeout: WAIT_MS });
    await page.waitForSelector('.live.live', { timeout: WAIT_MS });
    for (const [i, h] of g.hosts.entries()) assert.equal(h.run('run', '--id', `job-${i}`, '--', 'echo', `from host ${i}`).status, 0);
    await page.waitForSelector('tr.run[data-run="job-0"][data-host="alpha"] .badge.succeeded', { timeout: WAIT_MS });
    await page.waitForSelector('tr.run[data-run="job-1"][data-host="beta"] .badge.succeeded', { timeout: WAIT_MS });
    await page.selectOption('.f-host', 'beta');
    await page.waitForSelector('tr.run[data-run="job-0"]', { state: 'detached', timeout: WAIT_MS });
    await page.selectOption('.f-host', '');
    for (const h of ['alpha', 'beta']) {
      await page.waitForFunction((host) => /0 active \/ 1 runs/.test(document.querySelector(`.host-item[data-host="${host}"] .count`).textContent), h, { timeout: WAIT_MS });
    }
    await shot(page, 'gateway');
    await page.click('tr.run[data-run="job-1"] a');
    await page.waitForFunction(() => [...document.querySelectorAll('.log .row.line .text')].some((e) => e.textContent === 'from host 1'), null, { timeout: WAIT_MS });
    assert.match(await page.textContent('.run-meta'), /host beta/);
    assert.deepEqual(page.errors, []);
  } finally {
    await g.stop();
  }
});
