// Path `/runs/`, namespace `/` (spec "Socket.IO", seed 000): every event of
// a run as `run-event`, equal to the journal, whatever the transport and
// whenever the client comes; refusals as `error` then a disconnect; and
// Engine.IO's own errors over HTTP.
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { Daemon, next, within, gate, runsClient } = require('./helpers');

let d;
before(async () => { d = await Daemon.start(); });
after(async () => { await d.stop(); });

// One run seen by three clients: subscribed before it starts, while it
// runs (it waits on a FIFO until then), and after it ended.
async function beforeDuringAfter(id, transports) {
  const g = gate(d.dir, `gate-${id}`);
  const early = runsClient(d, id, { transports });
  await next(early.socket, 'connect');
  const firstLine = new Promise((resolve) => early.socket.on('run-event', (e) => e.type === 'stdout' && resolve()));
  const job = d.spawnRun('run', '--id', id, '--', 'sh', '-c', `echo first; cat ${g.file}; seq 1 200; echo oops >&2; exit 3`);
  await firstLine;
  const during = runsClient(d, id, { transports });
  await next(during.socket, 'connect');
  // Upgraded (where it may be) while the run is still going.
  const engine = during.socket.io.engine;
  if (transports.length > 1 && engine.transport.name !== 'websocket') {
    await next(engine, 'upgrade', 'the upgrade to websocket');
  }
  assert.equal(engine.transport.name, transports.at(-1));
  await g.open();
  assert.equal(await job, 3);
  assert.equal(await early.done(), 'io server disconnect');
  assert.equal(await during.done(), 'io server disconnect');
  const late = runsClient(d, id, { transports });
  assert.equal(await late.done(), 'io server disconnect');
  const journal = d.journal(id);
  assert.equal(journal.at(-1).data, 'failed');
  for (const [name, c] of [['early', early], ['during', during], ['late', late]]) {
    assert.deepEqual(c.events, journal, `${name} client (${transports}) got the journal, in order`);
  }
}

test("seed 000's client options get every event, before, during and after the run", async () => {
  await beforeDuringAfter('sio-ws', ['websocket']);
});

test('the same over polling only', async () => {
  await beforeDuringAfter('sio-poll', ['polling']);
});

test('the same over polling upgraded to websocket', async () => {
  await beforeDuringAfter('sio-up', ['polling', 'websocket']);
});

test('since= in the handshake query skips what the client has', async () => {
  assert.equal(d.run('run', '--id', 'sio-since', '--', 'seq', '1', '3').status, 0);
  const c = runsClient(d, 'sio-since', { extra: { query: { runId: 'sio-since', since: 2 } } });
  await c.done();
  assert.deepEqual(c.events, d.journal('sio-since').slice(2));
});

for (const [what, opts, code] of [
  ['a wrong token', { token: 'wrong-token-0123456789' }, 'unauthorized'],
  ['no token at all', { token: null }, 'unauthorized'],
]) {
  test(`${what} gets error "${code}" and a disconnect`, async () => {
    const c = runsClient(d, 'anything', opts);
    const error = next(c.socket, 'error');
    assert.equal(await error, code);
    assert.equal(await c.done(), 'io server disconnect');
    assert.deepEqual(c.events, []);
  });
}

test('a missing run ID gets error "missing-run-id" and a disconnect', async () => {
  for (const transports of [['websocket'], ['polling']]) {
    const c = runsClient(d, null, { transports });
    assert.equal(await next(c.socket, 'error'), 'missing-run-id');
    assert.equal(await c.done(), 'io server disconnect');
  }
});

test('the token may also come as Authorization: Bearer or ?token=', async () => {
  assert.equal(d.run('run', '--id', 'sio-bearer', '--', 'echo', 'hi').status, 0);
  const bearer = runsClient(d, 'sio-bearer', {
    token: null, extra: { extraHeaders: { Authorization: `Bearer ${d.token}` } },
  });
  const query = runsClient(d, 'sio-bearer', {
    token: null, transports: ['polling'], extra: { query: { runId: 'sio-bearer', token: d.token } },
  });
  await bearer.done();
  await query.done();
  assert.deepEqual(bearer.events, d.journal('sio-bearer'));
  assert.deepEqual(query.events, d.journal('sio-bearer'));
});

test("Engine.IO's errors: bad EIO, transport, sid, packet, method", async () => {
  const get = async (q, init) => {
    const r = await fetch(`${d.url}/socket.io/?${q}`, init);
    return [r.status, await r.json()];
  };
  assert.deepEqual(await get('EIO=3&transport=polling'), [400, { code: 5, message: 'Unsupported protocol version' }]);
  assert.deepEqual(await get('EIO=4&transport=pigeon'), [400, { code: 0, message: 'Transport unknown' }]);
  assert.deepEqual(await get('EIO=4&transport=polling&sid=nope'), [400, { code: 1, message: 'Session ID unknown' }]);
  assert.deepEqual(await get('EIO=4&transport=polling', { method: 'POST', body: '40' }),
    [400, { code: 2, message: 'Bad handshake method' }]);
  const open = await (await fetch(`${d.url}/socket.io/?EIO=4&transport=polling`)).text();
  assert.match(open, /^0\{"sid":"[A-Za-z0-9_-]+","upgrades":\["websocket"\],"pingInterval":25000,"pingTimeout":35000,"maxPayload":65536\}$/);
  const sid = JSON.parse(open.slice(1)).sid;
  assert.deepEqual(await get(`EIO=4&transport=polling&sid=${sid}`, { method: 'POST', body: '9nonsense' }),
    [400, { code: 3, message: 'Bad request' }]);
});

test('polling answers carry CORS headers for browser pages; the old /runs endpoints are untouched', async () => {
  const origin = 'http://dashboard.example';
  const r = await fetch(`${d.url}/runs/?EIO=4&transport=polling&runId=x`, { headers: { Origin: origin } });
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('access-control-allow-origin'), origin);
  assert.equal(r.headers.get('access-control-allow-credentials'), 'true');
  const pre = await fetch(`${d.url}/socket.io/?EIO=4&transport=polling`, {
    method: 'OPTIONS', headers: { Origin: origin, 'Access-Control-Request-Headers': 'authorization' },
  });
  assert.equal(pre.status, 204);
  assert.equal(pre.headers.get('access-control-allow-headers'), 'authorization');
  const list = await fetch(`${d.url}/runs`, { headers: { Authorization: `Bearer ${d.token}` } });
  assert.equal(list.status, 200);
  assert.ok(Array.isArray(await list.json()));
  const slash = await fetch(`${d.url}/runs/`, { headers: { Authorization: `Bearer ${d.token}` } });
  assert.ok(Array.isArray(await slash.json()), 'GET /runs/ without EIO is still the list');
});

test('polling sessions count against max_connections and expire without GETs', async () => {
  // A tighter limit and heartbeat than the defaults, so the table fills and empties quickly.
  const small = await Daemon.start('[stream]\nmax_connections = 4\nping_interval = "1s"\nping_timeout = "2s"\n');
  try {
    const handshake = () => fetch(`${small.url}/socket.io/?EIO=4&transport=polling`, { headers: { Connection: 'close' } });
    const statuses = [];
    for (let i = 0; i < 6; i += 1) {
      const r = await handshake();
      await r.arrayBuffer();
      statuses.push(r.status);
    }
    assert.ok(statuses.includes(503), `the table is bounded: ${statuses}`);
    assert.ok(statuses.filter((s) => s === 200).length <= 4, `${statuses}`);
    // Sessions nobody polls end after ping_timeout, and make room again.
    await within('an expired session to make room', (async () => {
      for (;;) {
        const r = await handshake();
        await r.arrayBuffer();
        if (r.status === 200) return;
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    })());
  } finally {
    await small.stop();
  }
});
