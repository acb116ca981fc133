// Turns bench/results/raw.jsonl into the Markdown table of BENCHMARKS.md.
// usage: node report.js RAW.jsonl MODE MACHINE ELAPSED_S NODE_VERSION BUSY
'use strict';
const fs = require('node:fs');

const [raw, mode, machine, elapsed, nodeVersion, busy] = process.argv.slice(2);
const smoke = mode === 'smoke';
const rows = fs
  .readFileSync(raw, 'utf8')
  .split('\n')
  .filter(Boolean)
  .map((l) => JSON.parse(l));
const get = (scenario, server) => {
  const r = rows.find((x) => x.scenario === scenario && x.server === server);
  return r && r.result && !r.result.error ? r.result : null;
};
const SERVERS = ['runtap', 'ws', 'socketio'];

const num = (x, d = 1) => (x === null || x === undefined || Number.isNaN(x) ? '—' : Number(x).toFixed(d));
const mib = (kib) => (kib ? kib / 1024 : null);
const ratio = (a, b) => (a !== null && b !== null && a !== undefined && b !== undefined && b !== 0 ? a / b : null);

const out = [];
const table = [];
// One row: metric values per server, how to format them, the target check.
function row(scenario, metric, values, fmt, target = '', verdict = null, ratioOverride) {
  const [r, w, s] = values;
  const rr = ratioOverride !== undefined ? ratioOverride : ratio(r, w);
  const v = smoke ? (target ? '(smoke)' : '') : !target ? '' : verdict === null ? 'no data' : verdict ? 'met' : '**not met**';
  table.push([scenario, metric, fmt(r), fmt(w), fmt(s), rr === null ? '—' : `${num(rr, 2)}×`, smoke ? '' : target, v]);
}
const each = (scenario, f) => SERVERS.map((k) => {
  const r = get(scenario, k);
  return r ? f(r) : null;
});
const finished = (r) => (r.timed_out ? null : r.time_s);

// Fan-out.
const fan = each('fanout', finished);
const fanRss = each('fanout', (r) => mib(r.server_rss_peak_kib));
const fanSubs = get('fanout', 'runtap');
const label = fanSubs ? `fan-out ${fanSubs.subs} × ${fanSubs.expect_lines} lines` : 'fan-out';
row(label, 'time to last subscriber done (s)', fan, (x) => num(x, 2),
  '≤ 0.5× ws', fan[0] !== null && fan[1] !== null ? fan[0] <= 0.5 * fan[1] : null);
row(label, 'server peak RSS (MB)', fanRss, (x) => num(x, 0), '≤ 100 MB', fanRss[0] !== null ? fanRss[0] * 1.048576 <= 100 : null);
row(label, 'subscribers with every line', each('fanout', (r) => `${r.complete_subs}/${r.subs}`), (x) => x ?? '—', '', null, null);
row(label, 'latency p50 / p99, first line of each event (ms)',
  each('fanout', (r) => [r.p50_ms, r.p99_ms]), (x) => (x ? `${num(x[0], 0)} / ${num(x[1], 0)}` : '—'), '', null, null);
row(label, 'server CPU (s)', each('fanout', (r) => r.server_cpu_s), (x) => num(x, 1));
row(label, 'load generator CPU (s)', each('fanout', (r) => r.loadgen_cpu_s), (x) => num(x, 1));

// Latency.
const lat = get('latency', 'runtap');
const latLabel = lat ? `latency, ${lat.subs} subs, 1 line/ms` : 'latency';
const p50 = each('latency', (r) => r.p50_ms);
const p99 = each('latency', (r) => r.p99_ms);
row(latLabel, 'p50 (ms)', p50, (x) => num(x, 2), '≤ 3 ms', p50[0] !== null ? p50[0] <= 3 : null);
row(latLabel, 'p99 (ms)', p99, (x) => num(x, 2), '≤ 10 ms', p99[0] !== null ? p99[0] <= 10 : null);
row(latLabel, 'max (ms)', each('latency', (r) => r.max_ms), (x) => num(x, 1));
row(latLabel, 'samples (lines × subscribers)', each('latency', (r) => r.samples), (x) => (x === null ? '—' : String(x)), '', null, null);

// Stalled subscriber: the same two scenarios with one extra subscriber that never reads.
const fanSt = each('fanout-stalled', finished);
const fanStRss = each('fanout-stalled', (r) => mib(r.server_rss_peak_kib));
const change = (a, b) => (a !== null && b !== null ? a / b : null);
const within = (x) => (x === null ? null : x <= 1.1);
const stLabel = '+1 stalled subscriber';
row(stLabel, 'fan-out time (s)', fanSt, (x) => num(x, 2));
row(stLabel, 'fan-out time, stalled / not', SERVERS.map((_, i) => change(fanSt[i], fan[i])), (x) => (x === null ? '—' : `${num(x, 2)}×`),
  '≤ 1.1×', within(change(fanSt[0], fan[0])), null);
row(stLabel, 'fan-out server peak RSS (MB)', fanStRss, (x) => num(x, 0), '≤ 100 MB', fanStRss[0] !== null ? fanStRss[0] * 1.048576 <= 100 : null);
const stP99 = each('latency-stalled', (r) => r.p99_ms);
const stP50 = each('latency-stalled', (r) => r.p50_ms);
row(stLabel, 'latency p50 (ms)', stP50, (x) => num(x, 2), '≤ 3 ms', stP50[0] !== null ? stP50[0] <= 3 : null);
row(stLabel, 'latency p99 (ms)', stP99, (x) => num(x, 2), '≤ 10 ms', stP99[0] !== null ? stP99[0] <= 10 : null);

// Idle.
const idle = SERVERS.map((k) => get('idle-rss', k)).find(Boolean);
const idleLabel = idle ? `${idle.subs} idle subscribers` : 'idle subscribers';
const perSub = each('idle-rss', (r) => r.bytes_per_sub / 1024);
row(idleLabel, 'server RSS per subscriber (KiB)', perSub, (x) => num(x, 2), '≤ 4 KiB', perSub[0] !== null ? perSub[0] <= 4 : null);
row(idleLabel, 'server RSS total (MB)', each('idle-rss', (r) => mib(r.server_rss_subscribed_kib)), (x) => num(x, 0));
const cpu = SERVERS.map((k) => get('idle-cpu', k)).find(Boolean);
const cpuLabel = cpu ? `${cpu.subs} idle subscribers, ${num(cpu.cpu_window_s, 0)} s` : 'idle CPU';
const cpuPct = each('idle-cpu', (r) => r.server_cpu_pct);
row(cpuLabel, 'server CPU (% of a core)', cpuPct, (x) => num(x, 2), '< 1 %', cpuPct[0] !== null ? cpuPct[0] < 1 : null);

// runtap-only rows: the reference goes in the ws column's place, named in the metric.
const big = get('bigjob', 'runtap');
if (big) {
  const r = big.runtap_s / big.pipe_s;
  const gib = big.bytes >= 1 << 30 ? `${big.bytes / (1 << 30)} GiB` : `${(big.bytes / 1e6).toFixed(0)} MB`;
  table.push([`${gib} job via \`runtap run\``, `time (s); plain pipe: ${num(big.pipe_s, 2)} s`, num(big.runtap_s, 2), '—', '—',
    `${num(r, 2)}× pipe`, smoke ? '' : '≤ 2.0× pipe', smoke ? '(smoke)' : r <= 2 ? 'met' : '**not met**']);
  table.push([`${gib} job via \`runtap run\``, 'daemon peak RSS (MB)', num(mib(big.server_hwm_kib), 0), '—', '—', '', '', '']);
}
// Slow readers: json client, every frame costs each subscriber SLOW_MS; no resubscribing.
const slow = SERVERS.map((k) => get('slow-readers', k)).find(Boolean);
const slowLabel = slow
  ? `${slow.subs} slow readers (${slow.slow_ms} ms/frame, json), ${(slow.expect_lines * 100 / 1e6).toFixed(0)} MB burst`
  : 'slow readers';
const slowDone = each('slow-readers', (r) => (r.timed_out ? null : r));
const slowBase = each('slow-readers-base', (r) => r.job_s);
const slowJob = each('slow-readers', (r) => r.job_s);
const slowRatio = SERVERS.map((_, i) => change(slowJob[i], slowBase[i]));
const peakOf = (r) => mib(Math.max(r.server_rss_peak_kib || 0, r.server_hwm_kib || 0));
const slowRss = each('slow-readers', peakOf);
row(slowLabel, 'subscribers with every byte and seq', each('slow-readers', (r) => [r.complete_subs, r.subs]),
  (x) => (x ? `${x[0]}/${x[1]}` : '—'), 'all', slowDone[0] ? slowDone[0].complete_subs === slowDone[0].subs : null, null);
row(slowLabel, 'subscribers cut off (`lagged`)', each('slow-readers', (r) => r.cut_off_subs), (x) => (x === null ? '—' : String(x)), '', null, null);
row(slowLabel, 'job wall time alone / with readers (s)', SERVERS.map((_, i) => (slowJob[i] !== null || slowBase[i] !== null ? [slowBase[i], slowJob[i]] : null)),
  (x) => (x ? `${num(x[0], 2)} / ${num(x[1], 2)}` : '—'), '', null, null);
row(slowLabel, 'job wall time, with / alone', slowRatio, (x) => (x === null ? '—' : `${num(x, 2)}×`), '≤ 1.1×', within(slowRatio[0]), null);
row(slowLabel, 'server peak RSS (MB)', slowRss, (x) => num(x, 0), '≤ 100 MB', slowRss[0] !== null ? slowRss[0] * 1.048576 <= 100 : null);
row(slowLabel, 'frames per subscriber', each('slow-readers', (r) => r.frames / Math.max(r.subs, 1)), (x) => num(x, 0), '', null, null);
row(slowLabel, 'last subscriber done (s)', each('slow-readers', finished), (x) => num(x, 2), '', null, null);
row(slowLabel, 'server / load generator CPU (s)', each('slow-readers', (r) => [r.server_cpu_s, r.loadgen_cpu_s]),
  (x) => (x ? `${num(x[0], 1)} / ${num(x[1], 1)}` : '—'), '', null, null);

const la = get('launches', 'runtap');
if (la) {
  table.push(['short runs (`true`) over the Unix socket', `completed per s (window ${la.window}); direct spawn: ${num(la.direct_spawns_per_s, 0)}/s`,
    num(la.runs_per_s, 0), '—', '—', '', smoke ? '' : '≥ 300/s', smoke ? '(smoke)' : la.runs_per_s >= 300 ? 'met' : '**not met**']);
}

const ir = get('idle-runs', 'runtap');
if (ir) {
  const label = `${ir.runs} runs idle after ${(ir.bytes / 1e6).toFixed(0)} MB each`;
  const idleMb = mib(ir.server_rss_idle_kib);
  table.push([label, `daemon RSS ${num(ir.settle_s, 0)} s after the last burst (MB)`, num(idleMb, 1), '—', '—', '',
    smoke ? '' : '≤ 20 MB', smoke ? '(smoke)' : idleMb * 1.048576 <= 20 ? 'met' : '**not met**']);
  table.push([label, 'daemon RSS: before / peak / idle 1 s / idle 2× later (MB)',
    [ir.server_rss_before_kib, Math.max(ir.server_rss_peak_kib, ir.server_hwm_kib || 0), ir.server_rss_idle_1s_kib, ir.server_rss_idle_later_kib]
      .map((k) => num(mib(k), 1)).join(' / '), '—', '—', '', '', '']);
  table.push([label, 'runs whose journal holds the whole burst', `${ir.verified_runs}/${ir.runs}`, '—', '—', '', '', '']);
}

const cu = get('catchup', 'runtap');
if (cu) {
  const label = `${cu.hosts} hosts catching up after a ${cu.outage_s} s gateway outage`;
  const per = (cu.caught_up_s || []).map((x) => num(x, 2)).join(' / ');
  table.push([label, `gateway restart to every host's copy complete (s), slowest; per host ${per}; gateway ready ${num(cu.gateway_ready_s, 2)} s`,
    num(cu.max_s, 2), '—', '—', '', smoke ? '' : '≤ 5 s', smoke ? '(smoke)' : cu.max_s === null ? 'no data' : cu.max_s <= 5 ? 'met' : '**not met**']);
}

// Both clients side by side: light (a byte scan of each frame) and json
// (every frame parsed, as a dashboard does; every line, byte and seq checked).
const modes = [];
const mrow = (scenario, metric, base, f, fmt, target = '', verdict = null) => {
  const vals = [];
  for (const k of SERVERS) for (const d of ['', '-json']) {
    const r = get(base + d, k);
    vals.push(r ? f(r) : null);
  }
  const rr = typeof vals[1] === 'number' && typeof vals[3] === 'number' ? ratio(vals[1], vals[3]) : null;
  const met = verdict ? verdict(vals) : null; // null: no data
  const v = smoke ? (target ? '(smoke)' : '') : !target ? '' : met === null ? 'no data' : met ? 'met' : '**not met**';
  modes.push([scenario, metric, ...vals.map(fmt), rr === null ? '—' : `${num(rr, 2)}×`, smoke ? '' : target, v]);
};
const subsOf = (base) => SERVERS.map((k) => get(base, k) || get(`${base}-json`, k)).find(Boolean);
const fj = subsOf('fanout');
const fjLabel = fj ? `fan-out ${fj.subs} × ${fj.expect_lines} lines` : 'fan-out';
const okNum = (x) => x !== null && x !== undefined;
const when = (x, f) => (okNum(x) ? f(x) : null);
mrow(fjLabel, 'time to last subscriber done (s)', 'fanout', finished, (x) => num(x, 2));
mrow(fjLabel, 'subscribers with every line (json: and every byte and seq)', 'fanout', (r) => `${r.complete_subs}/${r.subs}`, (x) => x ?? '—',
  'all (json)', (v) => when(v[1], (x) => x.split('/')[0] === x.split('/')[1]));
mrow(fjLabel, 'subscribers cut off (`lagged`, then resubscribed)', 'fanout', (r) => (r.cut_off_subs ?? null), (x) => (okNum(x) ? String(x) : '—'),
  '0 (json)', (v) => when(v[1], (x) => x === 0));
mrow(fjLabel, 'server peak RSS (MB)', 'fanout', peakOf, (x) => num(x, 0), '≤ 100 MB (json)', (v) => when(v[1], (x) => x * 1.048576 <= 100));
mrow(fjLabel, 'server CPU (s)', 'fanout', (r) => r.server_cpu_s, (x) => num(x, 1));
mrow(fjLabel, 'load generator CPU (s)', 'fanout', (r) => r.loadgen_cpu_s, (x) => num(x, 1));
mrow(fjLabel, 'frames per subscriber', 'fanout', (r) => r.frames / Math.max(r.subs, 1), (x) => num(x, 0));
mrow(fjLabel, 'latency p50 / p99, first line of each event (ms)', 'fanout', (r) => `${num(r.p50_ms, 0)} / ${num(r.p99_ms, 0)}`, (x) => x ?? '—');
for (const base of ['latency', 'latency100']) {
  const l = subsOf(base);
  const label = l ? `latency, ${l.subs} subs, 1 line/ms` : base;
  const half = (v) => (okNum(v[1]) && okNum(v[3]) ? v[1] <= 0.5 * v[3] : null);
  const big = base === 'latency';
  mrow(label, 'p50 (ms)', base, (r) => r.p50_ms, (x) => num(x, 2), big ? '≤ 0.5× ws (json)' : '', big ? half : null);
  mrow(label, 'p99 (ms)', base, (r) => r.p99_ms, (x) => num(x, 2), big ? '≤ 0.5× ws (json)' : '', big ? half : null);
  mrow(label, 'max (ms)', base, (r) => r.max_ms, (x) => num(x, 1));
  mrow(label, 'frames per subscriber', base, (r) => r.frames / Math.max(r.subs, 1), (x) => num(x, 0));
  mrow(label, 'subscribers with every line', base, (r) => `${r.complete_subs}/${r.subs}`, (x) => x ?? '—');
}

// Socket.IO: runtap's /runs/ endpoint (`--proto runtap-socketio`) against the socket.io peer, same client.
const sio = [];
const srow = (scenario, metric, base, f, fmt, target = '', verdict = null) => {
  const [r, p] = ['runtap', 'socketio'].map((k) => { const x = get(base, k); return x ? f(x) : null; });
  const rr = typeof r === 'number' && typeof p === 'number' ? ratio(r, p) : null;
  const met = verdict && r !== null && p !== null ? verdict(r, p) : null;
  const v = smoke ? (target ? '(smoke)' : '') : !target ? '' : met === null ? 'no data' : met ? 'met' : '**not met**';
  sio.push([scenario, metric, fmt(r), fmt(p), rr === null ? '—' : `${num(rr, 2)}×`, smoke ? '' : target, v]);
};
const sf = get('sio-fanout', 'runtap') || get('sio-fanout', 'socketio');
const sfLabel = sf ? `Socket.IO fan-out ${sf.subs} × ${sf.expect_lines} lines` : 'Socket.IO fan-out';
srow(sfLabel, 'time to last subscriber done (s)', 'sio-fanout', finished, (x) => num(x, 2), '≤ 0.25× socket.io', (r, p) => r <= 0.25 * p);
srow(sfLabel, 'subscribers with every line', 'sio-fanout', (r) => `${r.complete_subs}/${r.subs}`, (x) => x ?? '—', 'all',
  (r) => r.split('/')[0] === r.split('/')[1]);
srow(sfLabel, 'server peak RSS (MB)', 'sio-fanout', peakOf, (x) => num(x, 0));
srow(sfLabel, 'server CPU (s)', 'sio-fanout', (r) => r.server_cpu_s, (x) => num(x, 1));
const sl = get('sio-latency', 'runtap') || get('sio-latency', 'socketio');
const slLabel = sl ? `Socket.IO latency, ${sl.subs} subs, 1 line/ms` : 'Socket.IO latency';
srow(slLabel, 'p50 (ms)', 'sio-latency', (r) => r.p50_ms, (x) => num(x, 2), '≤ 0.5× socket.io', (r, p) => r <= 0.5 * p);
srow(slLabel, 'p99 (ms)', 'sio-latency', (r) => r.p99_ms, (x) => num(x, 2), '≤ 0.5× socket.io', (r, p) => r <= 0.5 * p);
srow(slLabel, 'subscribers with every line', 'sio-latency', (r) => `${r.complete_subs}/${r.subs}`, (x) => x ?? '—');
const si = get('sio-idle-rss', 'runtap') || get('sio-idle-rss', 'socketio');
const siLabel = si ? `Socket.IO, ${si.subs} idle connections` : 'Socket.IO idle';
srow(siLabel, 'server RSS per connection (KiB)', 'sio-idle-rss', (r) => r.bytes_per_sub / 1024, (x) => num(x, 2), '≤ 0.5× socket.io',
  (r, p) => r <= 0.5 * p);

// TLS against plain (issue 14), runtap only: idle subscribers over wss://, and
// connections set up and closed in a loop (full handshakes, no resumption).
const tls = [];
const trow = (scenario, metric, plain, withTls, fmt, useRatio = true) => {
  const rr = useRatio && typeof plain === 'number' && typeof withTls === 'number' ? ratio(withTls, plain) : null;
  tls.push([scenario, metric, fmt(plain), fmt(withTls), rr === null ? '—' : `${num(rr, 2)}×`]);
};
const ti = [get('idle-rss', 'runtap'), get('tls-idle-rss', 'runtap')];
if (ti[1]) {
  const l = `${ti[1].subs} idle subscribers`;
  const f = (r, g) => (r ? g(r) : null);
  trow(l, 'server RSS per subscriber (KiB)', f(ti[0], (r) => r.bytes_per_sub / 1024), f(ti[1], (r) => r.bytes_per_sub / 1024), (x) => num(x, 2));
  trow(l, 'server RSS total (MB)', f(ti[0], (r) => mib(r.server_rss_subscribed_kib)), f(ti[1], (r) => mib(r.server_rss_subscribed_kib)), (x) => num(x, 0));
  trow(l, 'time to connect and subscribe all (s)', f(ti[0], (r) => r.connect_s), f(ti[1], (r) => r.connect_s), (x) => num(x, 2));
}
const th = [get('handshakes', 'runtap'), get('tls-handshakes', 'runtap')];
const hsAny = th[0] || th[1];
if (hsAny) {
  for (const [kind, what] of [['ws', 'WebSocket upgrade to a run, first frame, close'], ['healthz', 'GET /healthz, connection: close']]) {
    const p = th.map((r) => (r && r[kind] ? r[kind] : null));
    if (!p[0] && !p[1]) continue;
    const l = `${what}, ${hsAny.concurrency} at a time`;
    const f = (g) => p.map((r) => (r ? g(r) : null));
    const [a, b] = f((r) => r.per_s);
    trow(l, 'connections per s', a, b, (x) => num(x, 0));
    const [c, d] = f((r) => r.p50_ms);
    trow(l, 'set-up p50 (ms)', c, d, (x) => num(x, 2));
    const [e, g] = f((r) => r.p99_ms);
    trow(l, 'set-up p99 (ms)', e, g, (x) => num(x, 2));
    const [h, i] = f((r) => r.server_cpu_s_per_1000);
    trow(l, 'server CPU per 1000 connections (s)', h, i, (x) => num(x, 3));
    const [j, k] = f((r) => r.loadgen_cpu_s / Math.max(r.connections, 1) * 1000);
    trow(l, 'load generator CPU per 1000 connections (s)', j, k, (x) => num(x, 3));
    const [m, n] = f((r) => r.errors);
    trow(l, 'failed set-ups', m, n, (x) => (okNum(x) ? String(x) : '—'), false);
  }
}

const failed = rows.filter((x) => !x.result || x.result.error);
out.push(`# runtap benchmarks (${mode})`);
out.push('');
out.push(`- date: ${new Date().toISOString().replace(/\.\d+Z$/, 'Z')}`);
out.push(`- machine: ${machine}; Node ${nodeVersion}`);
if (busy) out.push(`- machine busy with other work (1 s sample): ${busy}`);
out.push(`- command: \`bench/run.sh${smoke ? ' --smoke' : ''}\` (${elapsed} s including the build)`);
out.push('');
// A table with no data at all (e.g. `--only sio-fanout`) is left out.
const hasData = (t, from, to) => t.slice(from, to).some((v) => v !== '—' && v !== '' && v !== undefined);
if (table.some((t) => hasData(t, 2, 5))) {
  out.push('| scenario | metric | runtap | ws | socket.io | runtap/ws | target | verdict |');
  out.push('|---|---|---:|---:|---:|---:|---|---|');
  for (const t of table) out.push(`| ${t.join(' | ')} |`);
}
if (modes.some((t) => hasData(t, 2, 8))) {
  out.push('');
  out.push('Both clients, side by side: `light` scans each frame for its type and line heads; `json` parses every frame');
  out.push('in full (`serde_json::Value`, as a dashboard\'s `JSON.parse`) and checks every line, byte and `seq`.');
  out.push('');
  out.push('| scenario | metric | runtap light | runtap json | ws light | ws json | socket.io light | socket.io json | runtap/ws (json) | target | verdict |');
  out.push('|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|');
  for (const t of modes) out.push(`| ${t.join(' | ')} |`);
}
if (sio.some((t) => t[2] !== '—' || t[3] !== '—')) {
  out.push('');
  out.push('Socket.IO: runtap\'s `/runs/` endpoint against the socket.io peer, the same load generator (`--proto runtap-socketio` / `socketio`).');
  out.push('');
  out.push('| scenario | metric | runtap (Socket.IO) | socket.io | runtap/socket.io | target | verdict |');
  out.push('|---|---|---:|---:|---:|---|---|');
  for (const t of sio) out.push(`| ${t.join(' | ')} |`);
}
if (tls.length) {
  const ts = th[1] && th[1].tls_session;
  out.push('');
  out.push(`TLS against plain, runtap only: the same load generator with \`--tls-ca\` (rustls, ring; a fresh session every time, no resumption${ts ? `; ${ts.version}, ${ts.cipher_suite}, ${ts.kx_group}, P-256 ECDSA certificate` : ''}).`);
  out.push('');
  out.push('| scenario | metric | plain | TLS | TLS/plain |');
  out.push('|---|---|---:|---:|---:|');
  for (const t of tls) out.push(`| ${t.join(' | ')} |`);
}
if (failed.length) {
  out.push('');
  out.push('Failed measurements:');
  for (const f of failed) out.push(`- ${f.scenario} / ${f.server}: ${JSON.stringify(f.result)}`);
}
const errs = rows.filter((x) => x.result && Array.isArray(x.result.errors) && x.result.errors.length);
if (errs.length) {
  out.push('');
  out.push('Subscriber errors (first few):');
  for (const e of errs) out.push(`- ${e.scenario} / ${e.server}: ${e.result.errors.slice(0, 2).join('; ').slice(0, 300)}`);
}
console.log(out.join('\n'));
