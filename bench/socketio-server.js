// Baseline (a): a socket.io 4 server shaped like a NestJS "runs gateway".
// Clients authenticate in the handshake (`auth: {token}`), then emit
// `subscribe` with a run ID; the gateway keeps a Set of sockets per run ID
// and emits every stdout/stderr chunk of the job as a `run-event`
// `{type, data, timestamp}` to each registered socket (the usual
// `this.clients.get(runId).forEach(s => s.emit(...))` of a NestJS gateway).
'use strict';
const { Server } = require('socket.io');
const { tokenOk, spawnJob, controlHandler, listen, http } = require('./common');

const subscribers = new Map(); // runId -> Set<Socket>

function registered(runId) {
  let s = subscribers.get(runId);
  if (!s) subscribers.set(runId, (s = new Set()));
  return s;
}

function launch(runId, command) {
  const emit = (event) => {
    event.timestamp = new Date().toISOString();
    for (const socket of registered(runId)) socket.emit('run-event', event);
  };
  spawnJob(
    runId,
    command,
    (type, data) => emit({ type, data }),
    (code, signal) => {
      const data = code === 0 ? 'succeeded' : 'failed';
      emit(signal ? { type: 'status', data, signal } : { type: 'status', data, exitCode: code });
    },
  );
}

const server = http.createServer(controlHandler(launch));
const io = new Server(server, { serveClient: false, cors: { origin: '*' } });
io.use((socket, next) => (tokenOk(socket.handshake.auth && socket.handshake.auth.token) ? next() : next(new Error('unauthorized'))));
io.on('connection', (socket) => {
  const mine = new Set();
  socket.on('subscribe', (runId) => {
    if (typeof runId !== 'string') return;
    registered(runId).add(socket);
    mine.add(runId);
    socket.emit('subscribed', runId);
  });
  socket.on('disconnect', () => {
    for (const runId of mine) registered(runId).delete(socket);
  });
});
listen(server);
