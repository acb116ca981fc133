// Path `/socket.io/`, namespace `/workflow` (spec "Socket.IO", seed 001):
// `connected`, each subscription type, step updates and filters, unsubscribe, ping,
// get_status, per-event rate limits, and errors that leave the other
// subscriptions alone.
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { Daemon, BIN, next, within, gate, io } = require('./helpers');

let d;
// Only the metrics period is shortened; every limit keeps its default.
before(async () => { d = await Daemon.start('[stream.socketio]\nmetrics_interval = "200ms"\n'); });
after(async () => { await d.stop(); });

// Seed 001's client, recording every event it gets.
async function client(token = d.token) {
  const socket = io(`${d.url}/workflow`, { auth: { token }, transports: ['websocket', 'polling'], reconnection: false });
  const got = [];
  socket.onAny((event, body) => got.push({ event, body }));
  return { socket, got };
}

// The next `event` whose body passes `pick`.
function when(socket, event, pick = () => true, what = event) {
  return within(what, new Promise((resolve) => {
    const on = (body) => {
      if (pick(body)) {
        socket.off(event, on);
        resolve(body);
      }
    };
    socket.on(event, on);
  }));
}

test('connected, then an execution subscription follows the run to its end', async () => {
  const { socket } = await client();
  const hello = await next(socket, 'connected');
  assert.equal(typeof hello.clientId, 'string');
  assert.ok('userId' in hello && 'tenantId' in hello && hello.timestamp);
  const initialData = next(socket, 'initial_data');
  socket.emit('subscribe', { type: 'execution', resourceId: 'wf-exec' });
  const confirmed = await next(socket, 'subscription_confirmed');
  assert.deepEqual([confirmed.type, confirmed.resourceId, confirmed.subscriptionKey], ['execution', 'wf-exec', 'execution:wf-exec']);
  const initial = await initialData;
  assert.equal(initial.type, 'execution');
  assert.equal(initial.data, null, 'not started yet');
  const started = when(socket, 'update', (u) => u.type === 'execution.started');
  const failed = when(socket, 'update', (u) => u.type === 'execution.failed');
  assert.equal(d.run('run', '--id', 'wf-exec', '--', 'sh', '-c', 'exit 4').status, 4);
  assert.equal((await started).payload.executionId, 'wf-exec');
  const end = await failed;
  assert.deepEqual([end.payload.status, end.payload.exitCode], ['failed', 4]);
  assert.ok(end.timestamp);
  socket.disconnect();
});

test('execution: completed and cancelled; initial data is the status now', async () => {
  assert.equal(d.run('run', '--id', 'wf-ok', '--', 'true').status, 0);
  const { socket } = await client();
  await next(socket, 'connect');
  socket.emit('subscribe', { type: 'execution', resourceId: 'wf-ok' });
  const initial = await next(socket, 'initial_data');
  assert.equal(initial.data.status, 'succeeded');
  const job = d.spawnRun('run', '--id', 'wf-cancel', '--', 'sleep', '30');
  socket.emit('subscribe', { type: 'execution', resourceId: 'wf-cancel' });
  await when(socket, 'update', (u) => u.type === 'execution.started' && u.payload.runId === 'wf-cancel');
  const cancelled = when(socket, 'update', (u) => u.type === 'execution.cancelled');
  assert.equal(d.run('cancel', 'wf-cancel').status, 0);
  assert.equal((await cancelled).payload.status, 'cancelled');
  await job;
  socket.emit('subscribe', { type: 'execution', resourceId: 'wf-done' });
  const completed = when(socket, 'update', (u) => u.type === 'execution.completed');
  assert.equal(d.run('run', '--id', 'wf-done', '--', 'true').status, 0);
  assert.equal((await completed).payload.exitCode, 0);
  socket.disconnect();
});

test('logs: history as bounded initial_data pieces, then log.created updates; logLevel filters', async () => {
  // History larger than one piece: 3000 lines of 100 bytes.
  assert.equal(d.run('run', '--id', 'wf-logs', '--', 'sh', '-c', 'seq -f "%099g" 1 3000; echo bad >&2').status, 0);
  const { socket } = await client();
  await next(socket, 'connect');
  const pieces = [];
  const complete = new Promise((resolve) => socket.on('initial_data', (p) => {
    if (p.subscriptionKey !== 'logs:wf-logs') return;
    pieces.push(p);
    if (p.complete) resolve();
  }));
  socket.emit('subscribe', { type: 'logs', resourceId: 'wf-logs' });
  await within('the complete history', complete);
  assert.ok(pieces.length > 1, `history comes in pieces (${pieces.length})`);
  const lines = pieces.flatMap((p) => p.data);
  const output = d.journal('wf-logs').filter((e) => e.type === 'stdout' || e.type === 'stderr');
  assert.deepEqual(lines.map((l) => [l.seq, l.message, l.level]),
    output.map((e) => [e.seq, e.data, e.type === 'stderr' ? 'error' : 'info']));
  // Live, filtered to errors.
  const g = gate(d.dir, 'gate-wf-live');
  const job = d.spawnRun('run', '--id', 'wf-live', '--', 'sh', '-c', `cat ${g.file} >/dev/null; echo out; echo err >&2`);
  socket.emit('subscribe', { type: 'logs', resourceId: 'wf-live', filters: { logLevel: 'error' } });
  const confirmed = await when(socket, 'subscription_confirmed', (c) => c.resourceId === 'wf-live');
  assert.equal(confirmed.subscriptionKey, 'logs:wf-live:error');
  const update = when(socket, 'update', (u) => u.type === 'log.created' && u.payload.runId === 'wf-live');
  await g.open();
  const u = await update;
  assert.deepEqual([u.payload.message, u.payload.level, u.payload.stream], ['err\n', 'error', 'stderr']);
  assert.equal(await job, 0);
  socket.disconnect();
});

test('metrics: initial data, then metrics.updated periodically', async () => {
  const { socket } = await client();
  await next(socket, 'connect');
  socket.emit('subscribe', { type: 'metrics' });
  const initial = await when(socket, 'initial_data', (p) => p.type === 'metrics');
  assert.equal(typeof initial.data.runs, 'number');
  const u = await when(socket, 'update', (x) => x.type === 'metrics.updated');
  assert.ok(u.payload.runs >= 1 && 'activeRuns' in u.payload && 'connections' in u.payload);
  socket.emit('unsubscribe', { subscriptionKey: 'metrics' });
  assert.equal((await next(socket, 'unsubscription_confirmed')).subscriptionKey, 'metrics');
  socket.disconnect();
});

test('ping, get_status, acks; unknown run is an error, not a disconnect', async () => {
  const { socket } = await client();
  await next(socket, 'connect');
  socket.emit('ping');
  assert.ok((await next(socket, 'pong')).timestamp);
  const acked = await within('the ack', socket.emitWithAck('ping', {}));
  assert.ok(acked.timestamp, 'an ack carries the reply too');
  assert.equal(d.run('run', '--id', 'wf-status', '--', 'true').status, 0);
  socket.emit('get_status', { executionId: 'wf-status' });
  const status = await next(socket, 'status_response');
  assert.deepEqual([status.status.runId, status.status.status], ['wf-status', 'succeeded']);
  socket.emit('get_status', { executionId: 'wf-nothing' });
  const error = await next(socket, 'error');
  assert.deepEqual([error.type, typeof error.message, typeof error.timestamp], ['not-found', 'string', 'string']);
  socket.emit('ping');
  await next(socket, 'pong');
  assert.ok(socket.connected);
  socket.disconnect();
});

test('rate limits: the 31st ping in a minute is refused, and the connection stays', async () => {
  const { socket } = await client();
  await next(socket, 'connect');
  let pongs = 0;
  socket.on('pong', () => { pongs += 1; });
  const refused = next(socket, 'error');
  for (let i = 0; i < 31; i += 1) socket.emit('ping');
  const error = await refused;
  assert.equal(error.type, 'rate-limited');
  assert.match(error.message, /30 ping/);
  assert.equal(pongs, 30);
  for (let i = 0; i < 10; i += 1) socket.emit('subscribe', { type: 'metrics' });
  socket.emit('subscribe', { type: 'metrics' });
  assert.equal((await next(socket, 'error')).type, 'rate-limited', 'subscribe: 10 a minute');
  socket.emit('get_status', { executionId: 'wf-status' });
  assert.ok(await next(socket, 'status_response'), 'get_status has its own budget');
  socket.disconnect();
});

test('a bad payload is answered by error; the other subscriptions go on', async () => {
  const { socket } = await client();
  await next(socket, 'connect');
  const g = gate(d.dir, 'gate-wf-keep');
  const job = d.spawnRun('run', '--id', 'wf-keep', '--', 'sh', '-c', `cat ${g.file} >/dev/null; echo still here`);
  socket.emit('subscribe', { type: 'logs', resourceId: 'wf-keep' });
  await when(socket, 'subscription_confirmed', (c) => c.resourceId === 'wf-keep');
  for (const bad of ['garbage', { type: 'nonsense' }, { type: 'logs' }, { type: 'logs', resourceId: '../etc' },
    { type: 'logs', resourceId: 'x', filters: { logLevel: 'loud' } }, { type: 'workflow', resourceId: 'wf-1' },
    { type: 'workflow', resourceId: 'a*b*' }, { type: 'logs', resourceId: 'wf-keep', filters: { stepId: 3 } },
    { type: 'execution', resourceId: 'wf-keep', filters: { stepId: 's1' } }]) {
    socket.emit('subscribe', bad);
    const error = await next(socket, 'error');
    assert.equal(error.type, 'bad-request', JSON.stringify(error));
  }
  socket.emit('unsubscribe', 42);
  assert.equal((await next(socket, 'error')).type, 'bad-request');
  const line = when(socket, 'update', (u) => u.payload.message === 'still here\n');
  await g.open();
  await line;
  assert.equal(await job, 0);
  socket.disconnect();
});

test('a wrong token gets error "unauthorized" and a disconnect', async () => {
  const { socket } = await client('wrong-token-0123456789');
  const [error, reason] = [next(socket, 'error'), next(socket, 'disconnect')];
  assert.equal((await error).type, 'unauthorized');
  assert.equal(await reason, 'io server disconnect');
});

test('another namespace is refused with CONNECT_ERROR', async () => {
  const socket = io(`${d.url}/nope`, { auth: { token: d.token }, transports: ['websocket'], reconnection: false });
  const err = await next(socket, 'connect_error');
  assert.equal(err.message, 'Invalid namespace');
  socket.close();
});

test('execution: step updates; logs: filters.stepId keeps one step\'s output and step logs', async () => {
  const { socket, got } = await client();
  await next(socket, 'connect');
  socket.emit('subscribe', { type: 'execution', resourceId: 'wf-steps' });
  socket.emit('subscribe', { type: 'logs', resourceId: 'wf-steps', filters: { stepId: 's1' } });
  await when(socket, 'subscription_confirmed', (c) => c.subscriptionKey === 'logs:wf-steps:step=s1');
  const done = when(socket, 'update', (u) => u.type === 'execution.completed');
  const warned = when(socket, 'update', (u) => u.type === 'log.created' && u.payload.message === 'careful');
  const script = `${BIN} step start s1 --name Build && echo in-s1 && ${BIN} step log --level warn careful && ` +
    `${BIN} step end s1 && echo outside && ${BIN} step start s2 && ${BIN} step end s2 --status failure`;
  assert.equal(d.run('run', '--id', 'wf-steps', '--', 'sh', '-c', script).status, 0);
  await done;
  const updates = got.filter((g) => g.event === 'update');
  const steps = updates.filter((u) => u.body.type.startsWith('step.')).map((u) => [u.body.type, u.body.payload.stepId]);
  assert.deepEqual(steps, [['step.started', 's1'], ['step.completed', 's1'], ['step.started', 's2'], ['step.failed', 's2']]);
  const started = updates.find((u) => u.body.type === 'step.started').body.payload;
  assert.deepEqual([started.stepName, started.executionId], ['Build', 'wf-steps']);
  const completed = updates.find((u) => u.body.type === 'step.completed').body.payload;
  assert.ok(Number.isInteger(completed.duration), JSON.stringify(completed));
  // Everything of step s1 the logs subscription will get: one line, one warning.
  const logs = () => updates.filter((u) => u.body.type === 'log.created').map((u) => [u.body.payload.level, u.body.payload.message]);
  await warned;
  assert.deepEqual(logs(), [['info', 'in-s1\n'], ['warn', 'careful']]);
  socket.disconnect();
});

test('workflow: a run-ID pattern follows the lifecycle of matching runs, active and later', async () => {
  const { socket, got } = await client();
  await next(socket, 'connect');
  socket.emit('subscribe', { type: 'execution', resourceId: 'wfp-active' });
  const running = when(socket, 'update', (u) => u.type === 'execution.started' && u.payload.runId === 'wfp-active');
  const job = d.spawnRun('run', '--id', 'wfp-active', '--', 'sleep', '30');
  await running;
  const initial = when(socket, 'initial_data', (i) => i.type === 'workflow');
  socket.emit('subscribe', { type: 'workflow', resourceId: 'wfp-*' });
  const confirmed = await when(socket, 'subscription_confirmed', (c) => c.type === 'workflow');
  assert.deepEqual([confirmed.resourceId, confirmed.subscriptionKey], ['wfp-*', 'workflow:wfp-*']);
  const active = await initial;
  assert.deepEqual(active.data.map((r) => [r.runId, r.status]), [['wfp-active', 'running']]);
  assert.equal(active.complete, true);
  // Started in this order: were other-1 let through, it would come first.
  assert.equal(d.run('run', '--id', 'other-1', '--', 'true').status, 0);
  const later = when(socket, 'update', (u) => u.type === 'execution.completed' && u.payload.runId === 'wfp-later');
  assert.equal(d.run('run', '--id', 'wfp-later', '--', 'true').status, 0);
  await later;
  const cancelled = when(socket, 'update', (u) => u.type === 'execution.cancelled' && u.payload.runId === 'wfp-active');
  assert.equal(d.run('cancel', 'wfp-active').status, 0);
  await cancelled;
  await job;
  const seen = got.filter((g) => g.event === 'update').map((g) => g.body.payload.runId);
  assert.ok(!seen.includes('other-1'), JSON.stringify(seen));
  const laterTypes = got.filter((g) => g.event === 'update' && g.body.payload.runId === 'wfp-later').map((g) => g.body.type);
  assert.deepEqual(laterTypes, ['execution.started', 'execution.completed']);
  socket.emit('unsubscribe', { subscriptionKey: 'workflow:wfp-*' });
  await next(socket, 'unsubscription_confirmed');
  socket.disconnect();
});

test('tenant_activity: every run the token may see, and only those', async () => {
  const scoped = await Daemon.start('[[stream.restricted_tokens]]\ntoken = "team-a-token-0123456789"\nrun_prefix = "team-a-"\n');
  try {
    const socket = io(`${scoped.url}/workflow`, { auth: { token: 'team-a-token-0123456789' }, transports: ['websocket', 'polling'], reconnection: false });
    const updates = [];
    socket.on('update', (u) => updates.push(u));
    const hello = await next(socket, 'connected');
    assert.equal(hello.tenantId, 'team-a-');
    socket.emit('subscribe', { type: 'tenant_activity' });
    const initial = await next(socket, 'initial_data');
    assert.deepEqual([initial.type, initial.data], ['tenant_activity', []]);
    assert.equal(scoped.run('run', '--id', 'team-b-1', '--', 'true').status, 0);
    const mine = when(socket, 'update', (u) => u.type === 'execution.completed' && u.payload.runId === 'team-a-1');
    assert.equal(scoped.run('run', '--id', 'team-a-1', '--', 'true').status, 0);
    await mine;
    assert.deepEqual([...new Set(updates.map((u) => u.payload.runId))], ['team-a-1']);
    socket.disconnect();
  } finally {
    await scoped.stop();
  }
});
