// The page's entry: log in (from `#token=T`, session storage or the form),
// ask `/me` what the token may do, then show the runs or one run
// (`/?run=ID&host=H`; the fragment is left for line links, `#L120`).

import { api, token, ApiError } from './api.js';
import { el, clear } from './dom.js';
import { showRuns } from './runs.js';
import { showRun } from './runview.js';

const main = document.getElementById('main');
const who = document.getElementById('who');
let current = null;
let me = null;

// A token in the fragment is taken and the fragment removed at once, so it
// stays out of history and of anything that copies the URL.
function takeFragmentToken() {
  const m = /^#token=([^&]+)$/.exec(location.hash);
  if (!m) return;
  token.set(decodeURIComponent(m[1]));
  history.replaceState(null, '', location.pathname + location.search);
}

function route() {
  if (current) current.close();
  const q = new URLSearchParams(location.search);
  const run = q.get('run');
  if (run) {
    document.title = `${run} · runtap`;
    current = showRun(main, { id: run, host: q.get('host') || undefined, me, onBack: () => go('/') });
  } else {
    document.title = 'runtap';
    current = showRuns(main, { me, onOpen: (id, host) => go(`/?run=${encodeURIComponent(id)}${host ? `&host=${encodeURIComponent(host)}` : ''}`) });
  }
}

function go(url) {
  history.pushState(null, '', url);
  route();
}

function showLogin(message) {
  if (current) current.close();
  current = null;
  clear(main);
  who.replaceChildren();
  const input = el('input', { type: 'password', name: 'token', autocomplete: 'current-password', placeholder: 'token', required: true, ariaLabel: 'token' });
  const form = el('form', { className: 'login' }, [
    el('h1', { text: 'runtap' }),
    el('p', { text: 'Paste a token (the daemon writes one to STATE_DIR/token at first start).' }),
    input,
    el('button', { type: 'submit', text: 'Log in' }),
    el('p', { className: 'error', text: message || '', hidden: !message }),
  ]);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    token.set(input.value.trim());
    start();
  });
  main.append(form);
  input.focus();
}

async function start() {
  takeFragmentToken();
  if (!token.get()) return showLogin();
  try {
    me = await api.me();
  } catch (e) {
    token.clear();
    return showLogin(e instanceof ApiError && e.status === 401 ? 'That token was refused.' : `Could not reach the server: ${e.message}`);
  }
  const logout = el('button', { type: 'button', className: 'logout', text: 'Log out' });
  logout.addEventListener('click', () => {
    token.clear();
    showLogin();
  });
  who.replaceChildren(el('span', { text: `${me.runs === '*' ? 'all runs' : [].concat(me.runs).join(' ')}${me.cancel ? '' : ' · read only'}` }), logout);
  route();
}

window.addEventListener('popstate', () => me && route());
window.addEventListener('hashchange', () => {
  if (/^#token=/.test(location.hash)) start();
});
start();
