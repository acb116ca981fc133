// Socket.IO over TLS (docs/tls.md): a certificate made here with openssl (a
// CA and a leaf it signs), the daemon serving https only, and the npm
// client trusting that CA: polling over https, the upgrade to wss, every
// event of the run exactly once; a client that does not trust the CA fails.
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { Daemon, gate, next, runsClient } = require('./helpers');

let d;
let certDir;
let ca;

function openssl(...args) {
  const out = spawnSync('openssl', args, { cwd: certDir, encoding: 'utf8' });
  assert.equal(out.status, 0, `openssl ${args.join(' ')}:\n${out.stderr}`);
}

before(async () => {
  certDir = fs.mkdtempSync(path.join(os.tmpdir(), 'runtap-tls-'));
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=runtap js test CA');
  openssl('req', ...ec, '-keyout', 'key.pem', '-out', 'leaf.csr', '-subj', '/CN=localhost');
  fs.writeFileSync(path.join(certDir, 'ext'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n');
  openssl('x509', '-req', '-in', 'leaf.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '1',
    '-out', 'cert.pem', '-extfile', 'ext');
  ca = fs.readFileSync(path.join(certDir, 'ca.pem'));
  const file = (name) => JSON.stringify(path.join(certDir, name));
  d = await Daemon.start(`[stream]\ntls_cert = ${file('cert.pem')}\ntls_key = ${file('key.pem')}\n`);
  d.url = `https://${d.addr}`;
});
after(async () => {
  await d.stop();
  fs.rmSync(certDir, { recursive: true, force: true });
});

test('polling over https upgrades to wss and streams every event once', async () => {
  const g = gate(d.dir, 'gate-tls');
  const job = d.spawnRun('run', '--id', 'tls-1', '--', 'sh', '-c', `seq 1 10000; cat ${g.file} >/dev/null; seq 10001 20000`);
  const c = runsClient(d, 'tls-1', { transports: ['polling', 'websocket'], extra: { ca } });
  await next(c.socket, 'connect');
  const engine = c.socket.io.engine;
  if (engine.transport.name !== 'websocket') await next(engine, 'upgrade', 'the upgrade to websocket');
  assert.equal(engine.transport.name, 'websocket');
  await g.open();
  assert.equal(await job, 0);
  assert.equal(await c.done(), 'io server disconnect');
  const journal = d.journal('tls-1');
  assert.deepEqual(c.events, journal);
  const text = journal.filter((e) => e.type === 'stdout').map((e) => e.data).join('');
  assert.equal(text, Array.from({ length: 20000 }, (_, i) => `${i + 1}\n`).join(''));
});

test('a client that does not trust the CA cannot connect', async () => {
  const c = runsClient(d, 'tls-1', { transports: ['websocket'] });
  const err = await next(c.socket, 'connect_error');
  assert.match(String(err.description?.message ?? err.description ?? err), /certificate|self.signed|issuer/i);
  c.socket.close();
});
