// Slow is not stalled, for Socket.IO clients: a slow reader gets every
// byte of a 20 MB job (from the journal, at its own pace) without slowing
// the job; one that reads nothing at all is disconnected after
// `write_stall_timeout` (shortened here to keep the test short).
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { Daemon, next, within, runsClient } = require('./helpers');

const BYTES = 20 * 1000 * 1000;
const JOB = ['sh', '-c', `yes 'a line of output, sixty-four bytes long, for the slow reader!' | head -c ${BYTES}`];

let d;
before(async () => { d = await Daemon.start('[stream]\nwrite_stall_timeout = "2s"\n'); });
after(async () => { await d.stop(); });

// The client's own TCP socket (engine.io-client over `ws`).
function tcp(socket) {
  return socket.io.engine.transport.ws._socket;
}

test('a slow socket.io client gets every byte of a 20 MB job, and the job is not slowed', async () => {
  const c = runsClient(d, 'slow-1');
  await next(c.socket, 'connect');
  // Slow: after every event, stop reading for 20 ms.
  c.socket.on('run-event', () => {
    const s = tcp(c.socket);
    s.pause();
    setTimeout(() => s.resume(), 20);
  });
  const job = d.spawnRun('run', '--detach', '--id', 'slow-1', '--', ...JOB);
  assert.equal(await job, 0);
  await within('the slow client to finish', c.done(), 120000);
  const readAt = Date.now();
  const journal = d.journal('slow-1');
  const jobEndAt = Date.parse(journal.at(-1).timestamp);
  assert.deepEqual(c.events.map((e) => e.seq), journal.map((e) => e.seq));
  const got = c.events.filter((e) => e.type === 'stdout').map((e) => e.data).join('');
  assert.equal(got.length, BYTES);
  assert.equal(got, journal.filter((e) => e.type === 'stdout').map((e) => e.data).join(''));
  assert.ok(jobEndAt + 1000 < readAt, `the job ended ${readAt - jobEndAt} ms before the reader was done`);
});

test('a client that reads nothing is disconnected after write_stall_timeout', async () => {
  const c = runsClient(d, 'stall-1');
  await next(c.socket, 'connect');
  const s = tcp(c.socket);
  s.pause();
  const stallsBefore = await d.metric('runtap_write_stalls_total');
  // The job finishes on its own: the stalled reader holds nothing up.
  assert.equal(await d.spawnRun('run', '--id', 'stall-1', '--', ...JOB), 0);
  // The server gives up on the reader: the connection ends (seen once it reads again).
  const closed = new Promise((resolve) => s.once('close', resolve));
  const ended = await within('the stalled connection to be dropped', (async () => {
    for (;;) {
      const stalls = await d.metric('runtap_write_stalls_total');
      if (stalls > stallsBefore) return stalls;
      await new Promise((r) => setTimeout(r, 100));
    }
  })());
  assert.ok(ended > stallsBefore);
  s.resume();
  await within('the close to reach the client', closed);
  const reason = await c.done();
  assert.ok(['transport close', 'transport error', 'io server disconnect'].includes(reason), reason);
  const seqs = c.events.map((e) => e.seq);
  assert.deepEqual(seqs, seqs.map((_, i) => i + 1), 'what it did get is the start of the run, without a gap');
  assert.ok(seqs.length < d.journal('stall-1').length, 'and not all of it');
});
