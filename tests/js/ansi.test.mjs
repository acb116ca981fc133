// Unit tests of the dashboard's ANSI renderer (web/ansi.js), run by node
// without a browser: it has no DOM in it.
import test from 'node:test';
import assert from 'node:assert/strict';
import { AnsiParser, applySgr, paletteColor, PLAIN, lineText } from '../../web/ansi.js';

function parse(chunks) {
  const lines = [];
  const p = new AnsiParser((segs) => lines.push(segs));
  for (const c of chunks) {
    if (typeof c === 'string') p.write(c);
    else p.write(c.text, c.err);
  }
  return { lines, current: p.current() };
}

test('plain lines, and the last one without a newline stays current', () => {
  const { lines, current } = parse(['one\ntwo\nthr', 'ee']);
  assert.deepEqual(lines.map(lineText), ['one', 'two']);
  assert.equal(lineText(current), 'three');
});

test('16 colours, bright colours, bold, underline, reset', () => {
  const { lines } = parse(['\x1b[31mred\x1b[0m \x1b[1;4;92mbright\x1b[22m under\x1b[m plain\n']);
  const [segs] = lines;
  assert.deepEqual(segs.map((s) => s.text), ['red', ' ', 'bright', ' under', ' plain']);
  assert.equal(segs[0].style.fg, 1);
  assert.deepEqual(segs[1].style, PLAIN);
  assert.deepEqual([segs[2].style.fg, segs[2].style.bold, segs[2].style.underline], [10, true, true]);
  assert.deepEqual([segs[3].style.bold, segs[3].style.underline], [false, true]);
  assert.equal(segs[4].style.fg, null);
});

test('256 colours and truecolor, foreground and background', () => {
  const s = applySgr(PLAIN, [38, 5, 208, 48, 2, 1, 2, 255]);
  assert.equal(s.fg, 208);
  assert.equal(s.bg, '#0102ff');
  assert.equal(paletteColor(208), '#ff8700');
  assert.equal(paletteColor(232), '#080808');
  assert.equal(paletteColor(16), '#000000');
  assert.equal(paletteColor(3), null, '0..15 come from the theme');
});

test('malformed SGR does not throw and keeps what came before', () => {
  const s = applySgr(applySgr(PLAIN, [31]), [38, 9]);
  assert.equal(s.fg, 1);
  assert.equal(applySgr(PLAIN, [38, 2, 999, -5, 10]).fg, '#ff000a');
});

test('a \\r progress line ends as one line holding the last state', () => {
  const { lines } = parse(['  0%\r 50%', '\r100% done\n']);
  assert.deepEqual(lines.map(lineText), ['100% done']);
});

test('\\r then shorter text overwrites only its width; ESC[K erases the rest', () => {
  assert.deepEqual(parse(['abcdef\rXY\n']).lines.map(lineText), ['XYcdef']);
  assert.deepEqual(parse(['abcdef\rXY\x1b[K\n']).lines.map(lineText), ['XY']);
  assert.deepEqual(parse(['abc\x1b[2K\rxy\n']).lines.map(lineText), ['xy']);
});

test('an escape sequence cut between chunks is put back together', () => {
  const { lines } = parse(['\x1b[3', '1mred\x1b', '[0m\n']);
  assert.equal(lines[0][0].text, 'red');
  assert.equal(lines[0][0].style.fg, 1);
  assert.equal(lines[0].length, 1);
});

test('other escape sequences and control characters are dropped, not shown', () => {
  const { lines } = parse(['\x1b]0;title\x07a\x1b[?25lb\x1b=c\x07d\tE\n']);
  assert.deepEqual(lines.map(lineText), ['abcd\tE']);
});

test('stderr text is marked, also within a line shared with stdout', () => {
  const { lines } = parse([{ text: 'out ', err: false }, { text: 'err\n', err: true }]);
  assert.deepEqual(lines[0].map((s) => [s.text, s.err]), [['out ', false], ['err', true]]);
});

test('a style carries over lines until reset', () => {
  const { lines } = parse(['\x1b[32mone\ntwo\x1b[0m\nthree\n']);
  assert.deepEqual(lines.map((l) => l[0].style.fg), [2, 2, null]);
});

test('a runaway escape sequence does not swallow the log', () => {
  const { lines } = parse(['\x1b[' + '1;'.repeat(100), 'ok\n']);
  assert.deepEqual(lines.map(lineText), ['ok']);
});

test('100 000 lines parse quickly into few segments each', () => {
  const p = new AnsiParser(() => {});
  let n = 0;
  p.onLine = (segs) => { n++; assert.ok(segs.length <= 3); };
  const chunk = Array.from({ length: 1000 }, (_, i) => `line ${i} \x1b[33mwarn\x1b[0m\n`).join('');
  const t0 = Date.now();
  for (let i = 0; i < 100; i++) p.write(chunk);
  assert.equal(n, 100000);
  assert.ok(Date.now() - t0 < 5000);
});
