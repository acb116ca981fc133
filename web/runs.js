// The runs list: `GET /runs` once, then every status change of every run
// the token may see through one `/ws` pattern subscription (`*`, status
// events only), so the list stays live without reloads. At a gateway it
// also shows the hosts and their link state (`GET /hosts`, refreshed).

import { api, Stream } from './api.js';
import { el, clear, statusBadge, duration, isFinal, ago } from './dom.js';

const STATUSES = ['queued', 'running', 'succeeded', 'failed', 'cancelled', 'lost'];

function key(host, runId) {
  return `${host || ''}\n${runId}`;
}

export function showRuns(main, { me, onOpen }) {
  clear(main);
  const runs = new Map(); // key -> run (GET /runs shape, updated by events)
  const filters = { status: '', host: '', q: '' };

  const status = el('select', { className: 'f-status', ariaLabel: 'status' }, [
    el('option', { value: '', text: 'all statuses' }),
    el('option', { value: 'active', text: 'active' }),
    ...STATUSES.map((s) => el('option', { value: s, text: s })),
  ]);
  const hostSel = el('select', { className: 'f-host', ariaLabel: 'host', hidden: !me.hosts }, [el('option', { value: '', text: 'all hosts' })]);
  const search = el('input', { className: 'f-search', type: 'search', placeholder: 'search run ID or command', ariaLabel: 'search' });
  const live = el('span', { className: 'live', text: 'connecting…' });
  const toolbar = el('div', { className: 'toolbar' }, [el('h1', { text: 'Runs' }), status, hostSel, search, live]);
  const hostsBox = el('section', { className: 'hosts', hidden: !me.hosts });
  const head = el('tr', {}, ['status', 'run', ...(me.hosts ? ['host'] : []), 'command', 'exit', 'started', 'duration'].map((h) => el('th', { text: h })));
  const tbody = el('tbody');
  const empty = el('p', { className: 'empty', text: 'No runs yet. Launch one with runtap run -- CMD.', hidden: true });
  main.append(toolbar, hostsBox, el('table', { className: 'runs' }, [el('thead', {}, [head]), tbody]), empty);

  status.addEventListener('change', () => { filters.status = status.value; render(); });
  hostSel.addEventListener('change', () => { filters.host = hostSel.value; render(); });
  search.addEventListener('input', () => { filters.q = search.value.trim().toLowerCase(); render(); });

  function shown(r) {
    if (filters.status === 'active' ? isFinal(r.status) : filters.status && r.status !== filters.status) return false;
    if (filters.host && r.host !== filters.host) return false;
    if (filters.q && !r.runId.toLowerCase().includes(filters.q) && !(r.command || []).join(' ').toLowerCase().includes(filters.q)) return false;
    return true;
  }

  let scheduled = false;
  function render() {
    scheduled = false;
    const rows = [...runs.values()].filter(shown).sort((a, b) => (b.createdAt || '').localeCompare(a.createdAt || ''));
    tbody.replaceChildren(...rows.map(row));
    empty.hidden = runs.size > 0;
    const hosts = [...new Set([...runs.values()].map((r) => r.host).filter(Boolean))].sort();
    if (me.hosts && hostSel.options.length - 1 !== hosts.length) {
      hostSel.replaceChildren(el('option', { value: '', text: 'all hosts' }), ...hosts.map((h) => el('option', { value: h, text: h })));
      hostSel.value = filters.host;
    }
  }
  function later() {
    if (!scheduled) {
      scheduled = true;
      requestAnimationFrame(render);
    }
  }

  function row(r) {
    const link = el('a', { href: `/?run=${encodeURIComponent(r.runId)}${r.host ? `&host=${encodeURIComponent(r.host)}` : ''}`, text: r.runId });
    link.addEventListener('click', (e) => {
      e.preventDefault();
      onOpen(r.runId, r.host);
    });
    const cells = [
      el('td', {}, [statusBadge(r.status)]),
      el('td', { className: 'run-id' }, [link]),
      ...(me.hosts ? [el('td', { className: 'host', text: r.host || '' })] : []),
      el('td', { className: 'command', text: (r.command || []).join(' ') }),
      el('td', { className: 'exit', text: r.exitCode ?? (r.signal ? `sig ${r.signal}` : '') }),
      el('td', { className: 'started', text: ago(r.startedAt || r.createdAt) }),
      el('td', { className: 'duration', text: duration(r) }),
    ];
    return el('tr', { className: `run ${r.status}`, dataset: { run: r.runId, host: r.host || '' } }, cells);
  }

  async function load() {
    try {
      const list = await api.runs();
      for (const r of list) {
        const k = key(r.host, r.runId);
        const known = runs.get(k);
        // An event newer than the list's answer wins.
        if (!known || (known.lastSeq || 0) <= (r.lastSeq || 0)) runs.set(k, r);
      }
      later();
    } catch (e) {
      live.textContent = `could not list runs: ${e.message}`;
    }
  }

  async function learn(host, runId) {
    try {
      const r = await api.run(runId, host);
      const known = runs.get(key(host, runId));
      if (!known || (known.lastSeq || 0) <= (r.lastSeq || 0)) runs.set(key(host, runId), r);
      else runs.set(key(host, runId), { ...r, ...known, command: r.command, createdAt: r.createdAt });
      later();
    } catch {
      // Gone again (or not visible): the next event will tell.
    }
  }

  const stream = new Stream({
    onEvent(ev) {
      const k = key(ev.host, ev.runId);
      let r = runs.get(k);
      if (!r) {
        r = { runId: ev.runId, host: ev.host, status: ev.data, createdAt: ev.timestamp, command: [] };
        runs.set(k, r);
        learn(ev.host, ev.runId);
      }
      if (me.hosts) hostsSoon(); // a host's counts changed
      if ((r.lastSeq || 0) < ev.seq) {
        r.lastSeq = ev.seq;
        r.status = ev.data;
        if (ev.data === 'running') r.startedAt = ev.timestamp;
        if (isFinal(ev.data)) Object.assign(r, { endedAt: ev.timestamp, exitCode: ev.exitCode, signal: ev.signal, reason: ev.reason });
      }
      later();
    },
    onMessage(msg) {
      if (msg.type === 'run' && !runs.has(key(msg.host, msg.runId))) learn(msg.host, msg.runId);
      if (msg.type === 'skipped') live.textContent = `not following every run: ${msg.reason}`;
    },
    onState(state) {
      live.textContent = state === 'live' ? 'live' : state === 'unauthorized' ? 'token refused' : 'reconnecting…';
      live.className = `live ${state}`;
      if (state === 'live') load(); // what happened while away
    },
  });
  stream.subscribe({ runId: '*', types: ['status'] });

  let hostsTimer = 0;
  function hostsSoon() {
    if (!hostsTimer) hostsTimer = setTimeout(() => { hostsTimer = 0; loadHosts(); }, 300);
  }

  async function loadHosts() {
    try {
      const hosts = await api.hosts();
      hostsBox.replaceChildren(el('h2', { text: 'Hosts' }), el('ul', {}, hosts.map((h) => el('li', { className: `host-item ${h.connected ? 'up' : 'down'}`, dataset: { host: h.host } }, [
        el('span', { className: 'dot' }),
        el('b', { text: h.host }),
        el('span', { text: h.connected ? ` connected since ${ago(h.connectedSince)}` : ` offline, last seen ${ago(h.lastSeen) || 'never'}` }),
        el('span', { className: 'count', text: ` · ${h.activeRuns} active / ${h.runs} runs` }),
      ]))));
    } catch (e) {
      hostsBox.textContent = `hosts: ${e.message}`;
    }
  }
  const timers = [setInterval(() => { if ([...runs.values()].some((r) => !isFinal(r.status))) render(); }, 1000)];
  if (me.hosts) {
    loadHosts();
    timers.push(setInterval(loadHosts, 5000));
  }
  return {
    close() {
      timers.forEach(clearInterval);
      stream.close();
    },
  };
}
