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
const la = get('launches', 'runtap');
if (la) {
  table.push(['short runs (`true`) over the Unix socket', `completed per s (window ${la.window}); direct spawn: ${num(la.direct_spawns_per_s, 0)}/s`,
    num(la.runs_per_s, 0), '—', '—', '', smoke ? '' : '≥ 300/s', smoke ? '(smoke)' : la.runs_per_s >= 300 ? 'met' : '**not met**']);
}

const failed = rows.filter((x) => !x.result || x.result.error);
out.push(`# runtap benchmarks (${mode})`);
out.push('');
out.push(`- date: ${new Date().toISOString().replace(/\.\d+Z$/, 'Z')}`);
out.push(`- machine: ${machine}; Node ${nodeVersion}`);
if (busy) out.push(`- machine busy with other work (1 s sample): ${busy}`);
out.push(`- command: \`bench/run.sh${smoke ? ' --smoke' : ''}\` (${elapsed} s including the build)`);
out.push('');
out.push('| scenario | metric | runtap | ws | socket.io | runtap/ws | target | verdict |');
out.push('|---|---|---:|---:|---:|---:|---|---|');
for (const t of table) out.push(`| ${t.join(' | ')} |`);
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
