// JWT viewer tokens over Socket.IO (docs/auth.md): caps decide which run a
// `/runs` client may stream, `sub` is `/workflow`'s `userId`, and a token
// that expires while connected gets `error` "token-expired", then a
// disconnect, on both namespaces. Tokens are minted here (HS256, node's crypto).
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { Daemon, next, gate, runsClient, io } = require('./helpers');

const SECRET = 'a-js-test-hs256-secret-of-32-bytes-or-more';
let d;
let secretDir;
before(async () => {
  secretDir = fs.mkdtempSync(path.join(os.tmpdir(), 'runtap-jwt-'));
  const file = path.join(secretDir, 'secret');
  fs.writeFileSync(file, SECRET);
  d = await Daemon.start(`[auth]\njwt_hs256_secret_file = ${JSON.stringify(file)}\n`);
});
after(async () => {
  await d.stop();
  fs.rmSync(secretDir, { recursive: true, force: true });
});

function mint(claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${body}.${crypto.createHmac('sha256', SECRET).update(body).digest('base64url')}`;
}

const inSeconds = (s) => Math.floor(Date.now() / 1000) + s;
const readBuilds = [{ runs: ['build-*'], allow: ['read'] }];

test('caps decide which run a /runs client may stream', async () => {
  assert.equal(d.run('run', '--id', 'other-1', '--', 'echo', 'secret').status, 0);
  assert.equal(d.run('run', '--id', 'build-1', '--', 'echo', 'mine').status, 0);
  const token = mint({ sub: 'ci', exp: inSeconds(600), caps: readBuilds });
  const refused = runsClient(d, 'other-1', { token });
  assert.equal(await next(refused.socket, 'error'), 'forbidden');
  await refused.done();
  const ok = runsClient(d, 'build-1', { token });
  await ok.done();
  assert.deepEqual(ok.events, d.journal('build-1'));
});

test('a token that expires while connected ends both namespaces with token-expired', async () => {
  const g = gate(d.dir, 'gate-exp');
  const job = d.spawnRun('run', '--id', 'build-exp', '--', 'sh', '-c', `echo started; cat ${g.file}`);
  const token = mint({ sub: 'short-lived', exp: inSeconds(2), caps: readBuilds });
  const runs = runsClient(d, 'build-exp', { token });
  const runsError = next(runs.socket, 'error', 'the /runs error');
  const workflow = io(`${d.url}/workflow`, { auth: { token }, transports: ['websocket'], reconnection: false });
  const hello = await next(workflow, 'connected');
  assert.equal(hello.userId, 'short-lived');
  const workflowError = next(workflow, 'error', 'the /workflow error');
  const workflowGone = next(workflow, 'disconnect', 'the /workflow disconnect');
  assert.equal(await runsError, 'token-expired');
  assert.equal(await runs.done(), 'io server disconnect');
  assert.ok(runs.events.some((e) => e.data === 'started\n'), 'it streamed first');
  assert.equal((await workflowError).type, 'token-expired');
  assert.equal(await workflowGone, 'io server disconnect');
  await g.open();
  await job;
  assert.ok(!d.log.includes(token), 'no token in the log');
});
