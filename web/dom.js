// Small DOM and formatting helpers shared by the page's views.

/** `el('a', {href, text, className}, [children])`: an element, text set safely. */
export function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'text') node.textContent = v;
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else node[k] = v;
  }
  node.append(...children);
  return node;
}

export function clear(node) {
  node.replaceChildren();
}

const FINAL = new Set(['succeeded', 'failed', 'cancelled', 'lost']);

export function isFinal(status) {
  return FINAL.has(status);
}

export function statusBadge(status) {
  return el('span', { className: `badge ${status}`, text: status });
}

/** A run's duration so far (ticking while it runs) or in all. */
export function duration(run) {
  const start = run.startedAt || run.createdAt;
  if (!start) return '';
  if (isFinal(run.status) && !run.endedAt) return '';
  const end = run.endedAt ? Date.parse(run.endedAt) : Date.now();
  return formatSeconds(Math.max(0, (end - Date.parse(start)) / 1000));
}

export function formatSeconds(s) {
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(Math.floor(s % 60)).padStart(2, '0')}s`;
  return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, '0')}m`;
}

export function ago(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  const today = new Date();
  return d.toDateString() === today.toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
}
