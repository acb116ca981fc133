// A terminal's view of a byte stream, without the DOM: text becomes lines
// of styled segments. Only what build logs use is interpreted: SGR colours
// (16, 256, truecolor), bold, dim, italic, underline, inverse; `\r`, which
// moves back to the start of the line so that progress bars overwrite
// themselves; `\b`; and erase-in-line (`ESC[K`). Every other escape
// sequence is consumed and dropped, never shown as garbage.
//
// A line is a few segments, whatever its length, so a 100 000-line log
// costs a few objects per line; only a line being overwritten is cut into
// cells, and only while it is.

/** A style: fg/bg are null, a 0..255 palette index, or '#rrggbb'. */
export const PLAIN = Object.freeze({ fg: null, bg: null, bold: false, dim: false, italic: false, underline: false, inverse: false });

/** Applies the parameters of one SGR sequence (`ESC[...m`) to a style. */
export function applySgr(style, params) {
  const s = { ...style };
  const p = params.length ? params : [0];
  for (let i = 0; i < p.length; i++) {
    const n = p[i];
    if (n === 0) Object.assign(s, PLAIN);
    else if (n === 1) s.bold = true;
    else if (n === 2) s.dim = true;
    else if (n === 3) s.italic = true;
    else if (n === 4) s.underline = true;
    else if (n === 7) s.inverse = true;
    else if (n === 22) { s.bold = false; s.dim = false; }
    else if (n === 23) s.italic = false;
    else if (n === 24) s.underline = false;
    else if (n === 27) s.inverse = false;
    else if (n >= 30 && n <= 37) s.fg = n - 30;
    else if (n >= 90 && n <= 97) s.fg = n - 90 + 8;
    else if (n === 39) s.fg = null;
    else if (n >= 40 && n <= 47) s.bg = n - 40;
    else if (n >= 100 && n <= 107) s.bg = n - 100 + 8;
    else if (n === 49) s.bg = null;
    else if (n === 38 || n === 48) {
      const key = n === 38 ? 'fg' : 'bg';
      if (p[i + 1] === 5 && i + 2 < p.length) {
        s[key] = clamp(p[i + 2]);
        i += 2;
      } else if (p[i + 1] === 2 && i + 4 < p.length) {
        s[key] = '#' + [p[i + 2], p[i + 3], p[i + 4]].map((c) => clamp(c).toString(16).padStart(2, '0')).join('');
        i += 4;
      } else {
        break; // malformed: ignore the rest, as terminals do
      }
    }
  }
  return Object.freeze(s);
}

function clamp(n) {
  return Math.max(0, Math.min(255, n | 0));
}

function sameStyle(a, b) {
  return a === b || (a.fg === b.fg && a.bg === b.bg && a.bold === b.bold && a.dim === b.dim && a.italic === b.italic && a.underline === b.underline && a.inverse === b.inverse);
}

/** The 256-colour palette entry `n` as '#rrggbb' (16..255; 0..15 are themed by CSS). */
export function paletteColor(n) {
  if (n < 16) return null;
  if (n < 232) {
    const v = [0, 95, 135, 175, 215, 255];
    const i = n - 16;
    return '#' + [v[Math.floor(i / 36)], v[Math.floor(i / 6) % 6], v[i % 6]].map((c) => c.toString(16).padStart(2, '0')).join('');
  }
  const g = (8 + (n - 232) * 10).toString(16).padStart(2, '0');
  return `#${g}${g}${g}`;
}

const ESC = '\x1b';

/**
 * Turns chunks of text into lines. `onLine(segments, meta)` is called for
 * every finished line; `current()` is the line being written.
 * A segment is `{text, style, err}`: `err` marks text that came on stderr.
 */
export class AnsiParser {
  constructor(onLine) {
    this.onLine = onLine;
    this.style = PLAIN;
    this.segs = []; // the line being written
    this.len = 0; // its length in UTF-16 units
    this.col = 0;
    this.pending = ''; // an escape sequence cut by the end of a chunk
  }

  /** Feeds one chunk; `err` is true for stderr, `meta` is passed to onLine. */
  write(text, err = false, meta = undefined) {
    let s = this.pending + text;
    this.pending = '';
    let i = 0;
    const n = s.length;
    while (i < n) {
      const c = s[i];
      if (c === '\n') {
        this.finishLine(meta);
        i++;
      } else if (c === '\r') {
        this.col = 0;
        i++;
      } else if (c === '\b') {
        if (this.col > 0) this.col--;
        i++;
      } else if (c === ESC) {
        const end = this.escape(s, i);
        if (end < 0) {
          this.pending = s.slice(i);
          return;
        }
        i = end;
      } else if (c < ' ' && c !== '\t') {
        i++; // other control characters (bell, ...) show nothing
      } else {
        // A run of printable text in one go.
        let j = i + 1;
        while (j < n) {
          const d = s[j];
          if (d === '\n' || d === '\r' || d === '\b' || d === ESC || (d < ' ' && d !== '\t')) break;
          j++;
        }
        this.put(s.slice(i, j), err);
        i = j;
      }
    }
  }

  // The line being written is segments while text is only appended (the
  // common case, cheap), and becomes cells only when something overwrites.
  put(text, err) {
    if (this.col === this.len) {
      const last = this.segs[this.segs.length - 1];
      if (last && last.err === err && sameStyle(last.style, this.style)) last.text += text;
      else this.segs.push({ text, style: this.style, err });
      this.len += text.length;
      this.col = this.len;
      return;
    }
    const cells = this.cells();
    for (let k = 0; k < text.length; k++) {
      const cell = { ch: text[k], style: this.style, err };
      if (this.col < cells.length) cells[this.col] = cell;
      else cells.push(cell);
      this.col++;
    }
    this.setCells(cells);
  }

  cells() {
    const cells = [];
    for (const seg of this.segs) for (let k = 0; k < seg.text.length; k++) cells.push({ ch: seg.text[k], style: seg.style, err: seg.err });
    while (cells.length < this.col) cells.push({ ch: ' ', style: PLAIN, err: false });
    return cells;
  }

  setCells(cells) {
    this.segs = segments(cells);
    this.len = cells.length;
  }

  /** Handles the escape sequence at `s[i]`; returns the index after it, or -1 if cut. */
  escape(s, i) {
    if (i + 1 >= s.length) return -1;
    const kind = s[i + 1];
    if (kind === '[') {
      let j = i + 2;
      while (j < s.length && !(s.charCodeAt(j) >= 0x40 && s.charCodeAt(j) <= 0x7e)) j++;
      if (j >= s.length) return s.length - i > 64 ? s.length : -1; // a runaway sequence is dropped
      const final = s[j];
      const body = s.slice(i + 2, j);
      if (final === 'm' && /^[0-9;]*$/.test(body)) {
        this.style = applySgr(this.style, body === '' ? [] : body.split(';').map((x) => (x === '' ? 0 : parseInt(x, 10))));
      } else if (final === 'K') {
        const mode = body === '' ? 0 : parseInt(body, 10);
        const cells = this.cells();
        if (mode === 0) cells.length = Math.min(cells.length, this.col);
        else if (mode === 2) cells.length = 0;
        else if (mode === 1) for (let k = 0; k < Math.min(this.col + 1, cells.length); k++) cells[k] = { ch: ' ', style: PLAIN, err: false };
        this.setCells(cells);
      } else if (final === 'G') {
        this.col = Math.max(0, (parseInt(body, 10) || 1) - 1);
      }
      return j + 1;
    }
    if (kind === ']') {
      // OSC: up to BEL or ESC \ (titles, hyperlinks); dropped.
      for (let j = i + 2; j < s.length; j++) {
        if (s[j] === '\x07') return j + 1;
        if (s[j] === ESC && j + 1 < s.length && s[j + 1] === '\\') return j + 2;
      }
      return s.length - i > 4096 ? s.length : -1;
    }
    return i + 2; // a two-character sequence (ESC =, ESC >, ESC 7, ...)
  }

  finishLine(meta) {
    this.onLine(this.segs, meta);
    this.segs = [];
    this.len = 0;
    this.col = 0;
  }

  /** The line being written, as segments (empty when at a line start). */
  current() {
    return this.segs;
  }

  /** Ends the stream: a last line without `\n` is finished too. */
  end(meta) {
    if (this.len) this.finishLine(meta);
  }
}

/** Cells to segments: runs of the same style and stream. */
export function segments(cells) {
  const out = [];
  for (const cell of cells) {
    const last = out[out.length - 1];
    if (last && last.err === cell.err && sameStyle(last.style, cell.style)) last.text += cell.ch;
    else out.push({ text: cell.ch, style: cell.style, err: cell.err });
  }
  return out;
}

/** Plain text of a line's segments. */
export function lineText(segs) {
  let t = '';
  for (const s of segs) t += s.text;
  return t;
}
