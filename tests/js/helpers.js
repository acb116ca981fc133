// The harness of the Socket.IO client suite: a real `runtap daemon` on an
// ephemeral port (RUNTAP_BIN, passed by tests/js_client.rs), the `runtap`
// CLI pointed at it, its journals, and bounded waits on client events.
'use strict';
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { io } = require('socket.io-client');

const BIN = process.env.RUNTAP_BIN || path.join(__dirname, '..', '..', 'target', 'debug', 'runtap');
// Every wait in the suite is bounded by this.
const WAIT_MS = 20000;

class Daemon {
  // Starts a daemon with `config` (TOML); resolves once its ready line names the address.
  static async start(config = '') {
    const d = new Daemon();
    d.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'runtap-js-'));
    d.state = path.join(d.dir, 'state');
    d.socket = path.join(d.dir, 'runtap.sock');
    const cfg = path.join(d.dir, 'config.toml');
    fs.writeFileSync(cfg, config);
    d.proc = spawn(BIN, ['daemon', '--config', cfg, '--state-dir', d.state, '--socket', d.socket,
      '--listen', '127.0.0.1:0'], { stdio: ['ignore', 'ignore', 'pipe'] });
    d.log = '';
    d.addr = await within('the daemon ready line', new Promise((resolve, reject) => {
      d.proc.stderr.setEncoding('utf8');
      d.proc.stderr.on('data', (chunk) => {
        d.log += chunk;
        const m = d.log.replace(/\x1b\[[0-9;]*m/g, '').match(/runtap daemon ready.*listen=(\S+)/);
        if (m) resolve(m[1]);
      });
      d.proc.on('exit', (code) => reject(new Error(`daemon exited (${code}):\n${d.log}`)));
    }));
    d.token = fs.readFileSync(path.join(d.state, 'token'), 'utf8').trim();
    d.url = `http://${d.addr}`;
    return d;
  }

  // Runs the CLI against this daemon; returns {status, stdout, stderr}.
  run(...args) {
    const out = spawnSync(BIN, args, { env: { ...process.env, RUNTAP_SOCKET: this.socket }, timeout: WAIT_MS, encoding: 'utf8' });
    return { status: out.status, stdout: out.stdout, stderr: out.stderr };
  }

  // The same, in the background (a run that waits for the test).
  spawnRun(...args) {
    const child = spawn(BIN, args, { env: { ...process.env, RUNTAP_SOCKET: this.socket }, stdio: 'ignore' });
    return new Promise((resolve) => child.on('exit', (code) => resolve(code)));
  }

  // The run's journal, one object per line.
  journal(id) {
    const text = fs.readFileSync(path.join(this.state, 'runs', id, 'events.jsonl'), 'utf8');
    return text.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l));
  }

  async metric(name) {
    const text = await (await fetch(`${this.url}/metrics`)).text();
    const m = text.match(new RegExp(`^${name} (\\d+)`, 'm'));
    return m ? Number(m[1]) : undefined;
  }

  async stop() {
    if (this.proc.exitCode === null) {
      const exited = new Promise((resolve) => this.proc.on('exit', resolve));
      this.proc.kill('SIGTERM');
      await within('the daemon to stop', exited);
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

// `promise`, or a rejection naming `what` after WAIT_MS.
function within(what, promise, ms = WAIT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// The next `event` on an emitter (a socket, its manager or its engine).
function next(emitter, event, what = event) {
  return within(what, new Promise((resolve) => emitter.once(event, (...args) => resolve(args[0]))));
}

// A named FIFO for a job to wait on, and the way to let it go on. The write
// is a child's, awaited with a bound: a blocking write in this process to a
// FIFO no job opens would freeze the file's event loop, timers included.
function gate(dir, name = 'gate') {
  const file = path.join(dir, name);
  spawnSync('mkfifo', [file]);
  const open = () => {
    const writer = spawn('sh', ['-c', 'printf "go\\n" > "$1"', 'sh', file], { stdio: 'ignore' });
    const wrote = new Promise((resolve, reject) => writer.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`writing ${file}: exit ${code}`)))));
    return within(`a job to read ${file}`, wrote).finally(() => writer.kill('SIGKILL'));
  };
  return { file, open };
}

// A `/runs` client with seed 000's options, collecting every `run-event`
// until the server disconnects it. `runId` or `token` null: none sent.
function runsClient(d, runId, { transports = ['websocket'], token = d.token, extra = {} } = {}) {
  const query = runId === null ? {} : { runId };
  const auth = token === null ? {} : { token };
  const socket = io(d.url, { path: '/runs', transports, query, auth, reconnection: false, ...extra });
  const events = [];
  socket.on('run-event', (e) => events.push(e));
  const done = new Promise((resolve) => socket.on('disconnect', (reason) => resolve(reason)));
  return { socket, events, done: () => within(`the end of ${runId}`, done) };
}

module.exports = { Daemon, BIN, WAIT_MS, within, next, gate, runsClient, io };
