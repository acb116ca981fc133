// A run's log as a terminal shows it, rendered virtually: every row has
// the same height and only the rows in view (plus a margin) are in the
// DOM, so a 100 000-line log scrolls as lightly as a 100-line one. Rows
// are output lines, step headers and notes (step logs, gaps). Lines of a
// collapsed step are left out of the visible list, not hidden by CSS.

import { paletteColor } from './ansi.js';

export const ROW_HEIGHT = 18; // px; style.css's .log row line-height
const OVERSCAN = 30;
const DATA_FRAME_MS = 50;

/** Renders one line's segments into `el`. */
export function renderSegments(el, segs) {
  for (const seg of segs) {
    const span = document.createElement('span');
    span.textContent = seg.text;
    const s = seg.style;
    let fg = s.fg;
    let bg = s.bg;
    if (s.inverse) [fg, bg] = [bg === null ? 'inv-fg' : bg, fg === null ? 'inv-bg' : fg];
    const cls = [];
    colour(span, cls, fg, 'f', 'color');
    colour(span, cls, bg, 'b', 'backgroundColor');
    if (s.bold) cls.push('B');
    if (s.dim) cls.push('D');
    if (s.italic) cls.push('I');
    if (s.underline) cls.push('U');
    if (seg.err) cls.push('E');
    if (cls.length) span.className = cls.join(' ');
    el.appendChild(span);
  }
}

// Palette 0..15 are classes (themed in CSS); 16..255 and truecolor are set
// through CSSOM, which the page's Content-Security-Policy allows (inline
// style attributes it does not).
function colour(span, cls, c, prefix, prop) {
  if (c === null || c === undefined) return;
  if (c === 'inv-fg') cls.push(prefix === 'f' ? 'fi' : 'bi');
  else if (c === 'inv-bg') cls.push(prefix === 'f' ? 'fi2' : 'bi2');
  else if (typeof c === 'number' && c < 16) cls.push(prefix + c);
  else span.style[prop] = typeof c === 'number' ? paletteColor(c) : c;
}

export class LogView {
  /** `root` is the scroll container; `onFollow(bool)` tells when following changes. */
  constructor(root, { onFollow = () => {}, onToggleStep = () => {} } = {}) {
    this.root = root;
    this.onFollow = onFollow;
    this.onToggleStep = onToggleStep;
    this.rows = []; // {kind:'line', segs, no, step} | {kind:'step', step} | {kind:'note', text, level, step}
    this.visible = []; // indices into rows
    this.steps = new Map(); // stepId -> {id, name, status, duration, collapsed}
    this.stepEls = new Map(); // stepId -> its header element, kept across renders
    this.current = []; // segments of the line being written
    this.lines = 0;
    this.follow = true;
    this.userScroll = false;
    this.lastRender = 0;
    this.dataTimer = 0;
    this.highlight = null;
    this.version = 0; // bumped on every change, so an unchanged view is not rebuilt
    this.drawn = '';
    this.spacer = document.createElement('div');
    this.spacer.className = 'log-spacer';
    this.body = document.createElement('div');
    this.body.className = 'log-rows';
    root.append(this.spacer, this.body);
    // Following stops only when the user scrolls (wheel, keys, the
    // scrollbar, touch), never because of a scroll event of the page's
    // own: those can arrive after more rows were added and look like a
    // scroll away from the bottom.
    const intent = () => { this.userScroll = true; };
    for (const ev of ['wheel', 'keydown', 'mousedown', 'touchstart']) root.addEventListener(ev, intent, { passive: true });
    root.addEventListener('scroll', () => {
      if (this.userScroll) {
        const atBottom = root.scrollTop + root.clientHeight >= root.scrollHeight - ROW_HEIGHT;
        if (atBottom !== this.follow) {
          this.follow = atBottom;
          this.onFollow(atBottom);
        }
      }
      this.schedule();
    });
    root.addEventListener('mouseup', () => { this.userScroll = false; });
    new ResizeObserver(() => this.schedule()).observe(root);
  }

  hidden(row) {
    const step = row.step ? this.steps.get(row.step) : undefined;
    return row.kind !== 'step' && step !== undefined && step.collapsed;
  }

  push(row) {
    this.rows.push(row);
    if (!this.hidden(row)) this.visible.push(this.rows.length - 1);
    this.changed();
  }

  addLine(segs, step) {
    this.lines += 1;
    this.push({ kind: 'line', segs, no: this.lines, step: step || null });
  }

  addNote(text, level, step) {
    this.push({ kind: 'note', text, level, step: step || null });
  }

  /** The line being written (a progress line overwriting itself). */
  setCurrent(segs) {
    this.current = segs;
    this.changed();
  }

  startStep(id, name) {
    const step = { id, name: name || id, status: 'running', duration: null, collapsed: false };
    this.steps.set(id, step);
    this.push({ kind: 'step', step });
    return step;
  }

  endStep(id, status, duration) {
    const step = this.steps.get(id);
    if (!step) return;
    step.status = status;
    step.duration = duration;
    this.changed();
  }

  toggleStep(id) {
    const step = this.steps.get(id);
    if (!step) return;
    step.collapsed = !step.collapsed;
    this.visible = [];
    this.rows.forEach((row, i) => {
      if (!this.hidden(row)) this.visible.push(i);
    });
    this.onToggleStep(step);
    this.changed();
  }

  /** Scrolls to output line `no` and marks it (a `#L120` link). */
  goToLine(no) {
    const index = this.visible.findIndex((i) => this.rows[i].kind === 'line' && this.rows[i].no === no);
    if (index < 0) return false;
    this.highlight = no;
    this.version += 1;
    this.follow = false;
    this.onFollow(false);
    this.render();
    this.root.scrollTop = Math.max(0, index * ROW_HEIGHT - this.root.clientHeight / 3);
    this.render();
    return true;
  }

  followTail() {
    this.follow = true;
    this.onFollow(true);
    this.render();
  }

  /**
   * Marks the model changed. New rows are drawn at most every
   * DATA_FRAME_MS: a history of 100 000 lines arrives in thousands of
   * events, and laying the log out again for each frame's worth would
   * cost more than the events themselves. Scrolling still draws at once.
   */
  changed() {
    this.version += 1;
    if (this.dataTimer) return;
    const wait = Math.max(0, this.lastRender + DATA_FRAME_MS - performance.now());
    this.dataTimer = setTimeout(() => {
      this.dataTimer = 0;
      this.schedule();
    }, wait);
  }

  schedule() {
    if (this.pending) return;
    this.pending = requestAnimationFrame(() => {
      this.pending = 0;
      this.render();
    });
  }

  render() {
    this.lastRender = performance.now();
    const count = this.visible.length + (this.current.length ? 1 : 0);
    this.spacer.style.height = `${count * ROW_HEIGHT}px`;
    if (this.follow) {
      this.userScroll = false; // what scrolls next is this, until the user acts again
      this.root.scrollTop = this.root.scrollHeight;
    }
    const top = this.root.scrollTop;
    const first = Math.max(0, Math.floor(top / ROW_HEIGHT) - OVERSCAN);
    const last = Math.min(count, Math.ceil((top + this.root.clientHeight) / ROW_HEIGHT) + OVERSCAN);
    // Rows are rebuilt only when what is in view changed: a click on a row
    // must not land on an element replaced under the pointer.
    const drawn = `${first}:${last}:${this.version}`;
    if (drawn === this.drawn) return;
    this.drawn = drawn;
    this.body.style.transform = `translateY(${first * ROW_HEIGHT}px)`;
    const frag = document.createDocumentFragment();
    for (let k = first; k < last; k++) {
      frag.appendChild(k < this.visible.length ? this.rowElement(this.rows[this.visible[k]]) : this.currentElement());
    }
    this.body.replaceChildren(frag);
  }

  rowElement(row) {
    const el = document.createElement('div');
    if (row.kind === 'step') return this.stepElement(row.step);
    if (row.kind === 'note') {
      el.className = `row note ${row.level || 'info'}`;
      el.textContent = row.text;
      return el;
    }
    el.className = row.no === this.highlight ? 'row line hl' : 'row line';
    el.dataset.line = row.no;
    if (row.step) el.classList.add('in-step');
    const no = document.createElement('a');
    no.className = 'no';
    no.href = `#L${row.no}`;
    no.textContent = row.no;
    const text = document.createElement('span');
    text.className = 'text';
    renderSegments(text, row.segs);
    el.append(no, text);
    return el;
  }

  currentElement() {
    const el = document.createElement('div');
    el.className = 'row line current';
    const no = document.createElement('span');
    no.className = 'no';
    const text = document.createElement('span');
    text.className = 'text';
    renderSegments(text, this.current);
    el.append(no, text);
    return el;
  }

  /**
   * A step's header is one element for the life of the view, updated in
   * place: a live run re-renders often, and a header rebuilt between a
   * press and its release would swallow the click on its toggle.
   */
  stepElement(step) {
    let el = this.stepEls.get(step.id);
    if (!el) {
      el = document.createElement('div');
      el.dataset.step = step.id;
      const btn = document.createElement('button');
      btn.className = 'toggle';
      btn.type = 'button';
      btn.addEventListener('click', () => this.toggleStep(step.id));
      const name = document.createElement('span');
      name.className = 'name';
      const status = document.createElement('span');
      status.className = 'step-status';
      el.append(btn, name, status);
      this.stepEls.set(step.id, el);
    }
    const [btn, name, status] = el.children;
    el.className = `row step ${step.status}${step.collapsed ? ' collapsed' : ''}`;
    btn.textContent = step.collapsed ? '▸' : '▾';
    btn.setAttribute('aria-expanded', String(!step.collapsed));
    name.textContent = step.name;
    status.textContent = step.status + (step.duration !== null ? ` · ${formatMs(step.duration)}` : '');
    return el;
  }
}

export function formatMs(ms) {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${Math.floor(s % 60)}s`;
  return `${Math.floor(m / 60)}h ${m % 60}m`;
}
