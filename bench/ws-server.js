// Baseline (b): a plain `ws` server. One room (a Set of sockets) per run;
// each chunk of the job's output is serialised once as runtap's JSON
// envelope and sent to every socket in the room. No history, no queue
// bounds: what a hand-written broadcaster typically looks like.
//
//   GET /runs?runId=ID&token=T   (WebSocket) joins the room of run ID
'use strict';
const { WebSocketServer } = require('ws');
const { tokenOk, spawnJob, controlHandler, listen, http } = require('./common');

const rooms = new Map(); // runId -> Set<WebSocket>

function room(runId) {
  let r = rooms.get(runId);
  if (!r) rooms.set(runId, (r = new Set()));
  return r;
}

function launch(runId, command) {
  let seq = 0;
  const broadcast = (fields) => {
    const frame = JSON.stringify({ runId, seq: ++seq, ...fields, timestamp: new Date().toISOString() });
    for (const ws of room(runId)) ws.send(frame);
  };
  broadcast({ type: 'status', data: 'queued' });
  const child = spawnJob(
    runId,
    command,
    (type, data) => broadcast({ type, data }),
    (code, signal) => {
      const data = code === 0 ? 'succeeded' : 'failed';
      broadcast(signal ? { type: 'status', data, signal } : { type: 'status', data, exitCode: code });
      for (const ws of room(runId)) ws.close(1000);
      rooms.delete(runId);
    },
  );
  broadcast({ type: 'status', data: 'running', pid: child.pid });
}

const server = http.createServer(controlHandler(launch));
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
server.on('upgrade', (req, socket, head) => {
  const url = new URL(req.url, 'http://localhost');
  const runId = url.searchParams.get('runId');
  if (url.pathname !== '/runs' || !runId) return socket.destroy();
  if (!tokenOk(url.searchParams.get('token'))) {
    socket.end('HTTP/1.1 401 Unauthorized\r\nconnection: close\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    const r = room(runId);
    r.add(ws);
    ws.on('close', () => r.delete(ws));
    ws.on('error', () => {});
  });
});
listen(server);
