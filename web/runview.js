// One run: its header (status, exit code, command, times, progress, cancel,
// download) and its live log, from the run's events over `/ws`: the whole
// history from the journal, then live, in seq order.

import { api, Stream } from './api.js';
import { AnsiParser } from './ansi.js';
import { LogView, formatMs } from './logview.js';
import { el, statusBadge, duration, isFinal, clear } from './dom.js';

/** Decodes one output stream's chunks; base64 chunks may split a UTF-8 character. */
class StreamText {
  constructor() {
    this.decoder = new TextDecoder('utf-8');
  }

  text(ev) {
    if (ev.encoding !== 'base64') return this.decoder.decode() + ev.data; // flush a cut character, then plain text
    const bin = atob(ev.data);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return this.decoder.decode(bytes, { stream: true });
  }
}

export function showRun(main, { id, host, me, onBack }) {
  clear(main);
  const info = { runId: id, host, status: 'queued', command: [], exitCode: undefined };
  const back = el('a', { className: 'back', href: '/', text: '← runs' });
  back.addEventListener('click', (e) => {
    e.preventDefault();
    onBack();
  });
  const title = el('h1', { text: id });
  const badge = el('span');
  const meta = el('div', { className: 'run-meta' });
  const progress = el('div', { className: 'progress', hidden: true });
  const bar = el('div', { className: 'bar' });
  const stage = el('span', { className: 'stage' });
  progress.append(bar, stage);
  const actions = el('div', { className: 'actions' });
  const follow = el('button', { className: 'follow', type: 'button', text: 'Follow', hidden: true });
  const download = el('button', { type: 'button', text: 'Download log' });
  const cancel = el('button', { className: 'cancel danger', type: 'button', text: 'Cancel run', hidden: true });
  actions.append(follow, download, cancel);
  const final = el('div', { className: 'final', hidden: true });
  const logEl = el('div', { className: 'log', tabIndex: 0 });
  const header = el('header', { className: 'run-head' });
  header.append(back, el('div', { className: 'title' }, [title, badge]), meta, progress, actions, final);
  main.append(header, logEl);

  const view = new LogView(logEl, { onFollow: (on) => (follow.hidden = on) });
  follow.addEventListener('click', () => view.followTail());
  const text = { stdout: new StreamText(), stderr: new StreamText() };
  const parser = new AnsiParser((segs, step) => view.addLine(segs, step));
  let ended = false;
  let wantLine = /^#L(\d+)$/.exec(location.hash);

  function paint() {
    badge.replaceChildren(statusBadge(info.status));
    const bits = [];
    if (info.host) bits.push(['host', info.host]);
    if (info.exitCode !== undefined && info.exitCode !== null) bits.push(['exit code', String(info.exitCode)]);
    if (info.signal) bits.push(['signal', String(info.signal)]);
    bits.push(['command', (info.command || []).join(' ')]);
    if (info.startedAt) bits.push(['started', new Date(info.startedAt).toLocaleString()]);
    bits.push(['duration', duration(info)]);
    meta.replaceChildren(...bits.map(([k, v]) => el('span', { className: `m-${k.replace(' ', '-')}` }, [el('b', { text: `${k} ` }), el('span', { text: v })])));
    cancel.hidden = !(me.cancel && !isFinal(info.status));
    if (isFinal(info.status)) {
      final.hidden = false;
      final.className = `final ${info.status}`;
      final.textContent = `Run ${info.status}${info.reason ? `: ${info.reason}` : ''}`;
    }
  }
  const ticker = setInterval(() => {
    if (!main.isConnected) return clearInterval(ticker);
    if (!isFinal(info.status)) paint();
  }, 1000);

  function onEvent(ev) {
    const kind = ev.type;
    if (kind === 'stdout' || kind === 'stderr') {
      parser.write(text[kind].text(ev), kind === 'stderr', ev.stepId);
      view.setCurrent(parser.current());
    } else if (kind === 'status') {
      info.status = ev.data;
      if (ev.data === 'running') info.startedAt = info.startedAt || ev.timestamp;
      if (isFinal(ev.data)) {
        info.endedAt = ev.timestamp;
        info.exitCode = ev.exitCode;
        info.signal = ev.signal;
        info.reason = ev.reason;
        parser.end();
        view.setCurrent([]);
      }
      paint();
    } else if (kind === 'step_start') {
      view.startStep(ev.payload.stepId, ev.payload.stepName);
    } else if (kind === 'step_complete') {
      view.endStep(ev.payload.stepId, ev.payload.status, ev.payload.duration);
    } else if (kind === 'step_log') {
      const p = ev.payload;
      view.addNote(`[${p.level}] ${p.message}`, p.level, p.stepId);
    } else if (kind === 'progress') {
      const p = ev.payload;
      progress.hidden = false;
      bar.style.width = `${Math.round(Math.max(0, Math.min(1, p.progress)) * 100)}%`;
      stage.textContent = `${Math.round(p.progress * 100)}%${p.stage ? ` · ${p.stage}` : ''}${p.message ? ` · ${p.message}` : ''}`;
    }
    if (wantLine && view.lines >= Number(wantLine[1])) {
      view.goToLine(Number(wantLine[1]));
      wantLine = null;
    }
  }

  const stream = new Stream({
    onEvent,
    onMessage(msg) {
      if (msg.type === 'end') ended = true;
      else if (msg.type === 'error' && msg.code === 'journal-gap') view.addNote(`events ${msg.from}–${msg.to} are missing from the journal`, 'error');
      else if (msg.type === 'error') view.addNote(`${msg.code}: ${msg.message}`, 'error');
    },
    onState(state) {
      if (state === 'unauthorized') view.addNote('the token was refused', 'error');
      else if (state === 'reconnecting' && !ended) view.addNote('connection lost; reconnecting…', 'warn');
    },
  });
  const sub = { runId: id };
  if (host) sub.host = host;
  stream.subscribe(sub);

  api.run(id, host).then((r) => {
    Object.assign(info, r, { status: isFinal(info.status) ? info.status : r.status });
    paint();
  }).catch((e) => view.addNote(`run ${id}: ${e.message}`, 'error'));

  cancel.addEventListener('click', async () => {
    if (!confirm(`Cancel run ${id}? Its process group gets SIGTERM, then SIGKILL after the grace period.`)) return;
    cancel.disabled = true;
    try {
      await api.cancel(id, host);
    } catch (e) {
      view.addNote(`cancel failed: ${e.message}`, 'error');
    }
    cancel.disabled = false;
  });
  download.addEventListener('click', async () => {
    try {
      const blob = await api.log(id, host);
      const a = el('a', { href: URL.createObjectURL(blob), download: `${id}.log` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    } catch (e) {
      view.addNote(e.message, 'error');
    }
  });
  window.addEventListener('hashchange', function onHash() {
    if (!main.isConnected) return window.removeEventListener('hashchange', onHash);
    const m = /^#L(\d+)$/.exec(location.hash);
    if (m) view.goToLine(Number(m[1]));
  });
  paint();
  return {
    close() {
      clearInterval(ticker);
      stream.close();
    },
    view,
  };
}

export { formatMs };
