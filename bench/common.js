// Shared by the two baseline servers: the HTTP control endpoints the load
// generator uses to start and stop jobs, the token check, and start-up.
//
//   POST /launch  {"runId":"ID","command":["prog","arg",...]}  -> 200 {"runId":"ID"}
//   POST /cancel?runId=ID                                      -> 200
//
// Each server prints "listening HOST:PORT" on stdout once bound, and kills
// its jobs on SIGTERM/SIGINT.
'use strict';
const http = require('node:http');
const { spawn } = require('node:child_process');

const TOKEN = process.env.BENCH_TOKEN || '';
const jobs = new Map(); // runId -> ChildProcess

function tokenOk(t) {
  return TOKEN === '' || t === TOKEN;
}

// Spawns `command` the way a NestJS runs service does, calling
// onChunk(type, text) for every stdout/stderr chunk and onExit(code, signal).
function spawnJob(runId, command, onChunk, onExit) {
  const child = spawn(command[0], command.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  jobs.set(runId, child);
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stdout.on('data', (chunk) => onChunk('stdout', chunk));
  child.stderr.on('data', (chunk) => onChunk('stderr', chunk));
  child.on('error', () => {});
  child.on('close', (code, signal) => {
    jobs.delete(runId);
    onExit(code, signal);
  });
  return child;
}

function readBody(req, limit = 1 << 20) {
  return new Promise((resolve, reject) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c) => {
      body += c;
      if (body.length > limit) reject(new Error('body too large'));
    });
    req.on('end', () => resolve(body));
    req.on('error', reject);
  });
}

// The control plane; `launch(runId, command)` is the server's own.
function controlHandler(launch) {
  return async (req, res) => {
    const url = new URL(req.url, 'http://localhost');
    const reply = (status, obj) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(obj));
    };
    try {
      if (req.method === 'POST' && url.pathname === '/launch') {
        const { runId, command } = JSON.parse(await readBody(req));
        if (typeof runId !== 'string' || !Array.isArray(command) || command.length === 0) {
          return reply(400, { error: 'bad-request' });
        }
        if (jobs.has(runId)) return reply(409, { error: 'run-active' });
        launch(runId, command);
        return reply(200, { runId });
      }
      if (req.method === 'POST' && url.pathname === '/cancel') {
        const child = jobs.get(url.searchParams.get('runId'));
        if (child) child.kill('SIGTERM');
        return reply(200, { cancelled: Boolean(child) });
      }
      return reply(404, { error: 'not-found' });
    } catch (e) {
      return reply(400, { error: String(e && e.message) });
    }
  };
}

function listen(server) {
  const addr = process.env.BENCH_LISTEN || '127.0.0.1:0';
  const i = addr.lastIndexOf(':');
  server.listen({ host: addr.slice(0, i), port: Number(addr.slice(i + 1)), backlog: 4096 }, () => {
    const a = server.address();
    process.stdout.write(`listening ${a.address}:${a.port}\n`);
  });
  const stop = () => {
    for (const child of jobs.values()) child.kill('SIGKILL');
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

module.exports = { tokenOk, spawnJob, controlHandler, listen, http };
