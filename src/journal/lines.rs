//! What a journal line is, checked cheaply: a line is handed to subscribers
//! as it is, so a damaged one must be recognised before it goes out.
//!
//! Every line the writer produces is one JSON object whose first fields are
//! `{"runId":"<id>","seq":N,` (the field order of `Event`). A line counts as
//! an event when it is UTF-8 (checked where it becomes a frame), its `seq`
//! can be read from that prefix, and it is one complete JSON object. The
//! syntax check skips string contents eight bytes at a time, so it costs a
//! small fraction of what parsing the event would. A cut that leaves valid
//! JSON (bytes removed wholly inside one string) cannot be seen without a
//! checksum; docs/bad-input.md says so.

use crate::event::{Event, find_json_special};

/// Deepest nesting a journal line may have: serde_json's own recursion
/// limit, so every event serde parsed (a host's, at the gateway, whose
/// `payload` may nest as deep as that) reads back intact. Runtap's own
/// events are flat, with a `payload` object or two levels more.
const MAX_DEPTH: usize = 128;

/// `{"runId":"` + 128-byte ID + `","seq":` fits well within this.
const MAX_SEQ_OFFSET: usize = 200;

/// Pulls `seq` out of a journal line without parsing the whole event.
pub fn line_seq(json: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"seq\":";
    let search = &json[..json.len().min(MAX_SEQ_OFFSET)];
    let at = search.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = json[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&json[at..at + digits]).ok()?.parse().ok()
}

/// The `timestamp` of one journal line.
pub(super) fn line_timestamp(json: &[u8]) -> Option<String> {
    serde_json::from_slice::<Event>(json).ok().map(|e| e.timestamp)
}

/// `seq` of a line that is an intact event, or None for a damaged line.
pub(super) fn event_seq(line: &[u8]) -> Option<u64> {
    let seq = line_seq(line)?;
    is_json_object(line).then_some(seq)
}

/// Whether `s` is exactly one JSON object (surrounding whitespace allowed).
pub(crate) fn is_json_object(s: &[u8]) -> bool {
    let mut p = Syntax { s, i: 0 };
    p.ws();
    if p.peek() != Some(b'{') || !p.value(0) {
        return false;
    }
    p.ws();
    p.i == s.len()
}

/// A recursive-descent syntax check; `i` is the next byte to look at.
struct Syntax<'a> {
    s: &'a [u8],
    i: usize,
}

impl Syntax<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        self.ws();
        let ok = self.peek() == Some(b);
        self.i += usize::from(ok);
        ok
    }

    fn value(&mut self, depth: usize) -> bool {
        self.ws();
        match self.peek() {
            Some(b'{') if depth < MAX_DEPTH => self.object(depth + 1),
            Some(b'[') if depth < MAX_DEPTH => self.array(depth + 1),
            Some(b'"') => self.string(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => false,
        }
    }

    fn object(&mut self, depth: usize) -> bool {
        self.i += 1; // '{'
        if self.eat(b'}') {
            return true;
        }
        loop {
            self.ws();
            if !(self.peek() == Some(b'"') && self.string() && self.eat(b':') && self.value(depth)) {
                return false;
            }
            if self.eat(b'}') {
                return true;
            }
            if !self.eat(b',') {
                return false;
            }
        }
    }

    fn array(&mut self, depth: usize) -> bool {
        self.i += 1; // '['
        if self.eat(b']') {
            return true;
        }
        loop {
            if !self.value(depth) {
                return false;
            }
            if self.eat(b']') {
                return true;
            }
            if !self.eat(b',') {
                return false;
            }
        }
    }

    fn string(&mut self) -> bool {
        self.i += 1; // '"'
        loop {
            let Some(at) = find_json_special(&self.s[self.i..]) else { return false };
            self.i += at;
            match self.s[self.i] {
                b'"' => {
                    self.i += 1;
                    return true;
                }
                b'\\' => {
                    let ok = match self.s.get(self.i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => 2,
                        Some(b'u') => match self.unicode_escape(self.i) {
                            Some(len) => len,
                            None => return false,
                        },
                        _ => return false,
                    };
                    self.i += ok;
                }
                _ => return false, // a raw control character
            }
        }
    }

    /// Bytes of the `\uXXXX` escape at `at` (12 for a surrogate pair), or
    /// `None`: not four hex digits, or a surrogate without its other half,
    /// which serde_json refuses.
    fn unicode_escape(&self, at: usize) -> Option<usize> {
        let hex = |at: usize| {
            let digits = self.s.get(at + 2..at + 6)?;
            if self.s.get(at..at + 2) != Some(b"\\u") || !digits.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            u16::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
        };
        match hex(at)? {
            0xD800..=0xDBFF => hex(at + 6).filter(|low| (0xDC00..=0xDFFF).contains(low)).map(|_| 12),
            0xDC00..=0xDFFF => None,
            _ => Some(6),
        }
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        let ok = self.s[self.i..].starts_with(word);
        self.i += if ok { word.len() } else { 0 };
        ok
    }

    fn number(&mut self) -> bool {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        let digits = |p: &mut Self| {
            let from = p.i;
            while p.peek().is_some_and(|b| b.is_ascii_digit()) {
                p.i += 1;
            }
            p.i > from
        };
        // One zero, or digits that do not start with one: JSON has no
        // leading zeros, and a line serde_json refuses must not go out.
        if self.peek() == Some(b'0') {
            self.i += 1;
        } else if !digits(self) {
            return false;
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !digits(self) {
                return false;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !digits(self) {
                return false;
            }
        }
        self.i > start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_seq_reads_prefix() {
        assert_eq!(line_seq(br#"{"runId":"a","seq":17,"type":"stdout"}"#), Some(17));
        assert_eq!(line_seq(br#"{"runId":"a"}"#), None);
    }

    #[test]
    fn syntax_check_agrees_with_serde_json() {
        let cases: &[&[u8]] = &[
            br#"{"runId":"r","seq":1,"type":"stdout","data":"a \"q\" \\ \u00e9 \n","timestamp":"t"}"#,
            br#"{"a":[1,-2.5e3,true,false,null,{"b":{}}],"c":[]}"#,
            br#"  {}  "#,
            br#"{"runId":"bad","seq":6,"type":"stdout","0:00.123456Z"}"#,
            br#"{"a":1,}"#,
            br#"{"a":01x}"#,
            // A damaged line with a leading zero passed as intact (the
            // journal_recovery fuzz target's check); `runtap logs` refused it.
            br#"{"runId":"r","seq":2,"type":"status","data":"failed","exitCode":03}"#,
            br#"{"a":-01}"#,
            br#"{"a":[0,-0,0.5,-0.0e1,10,100]}"#,
            br#"{"a":00.5}"#,
            // Lone surrogates: valid to the RFC's grammar, refused by serde_json.
            br#"{"a":"\ud83d\ude00 \u00e9"}"#,
            br#"{"a":"\ud83d"}"#,
            br#"{"a":"\ude00\ud83d"}"#,
            br#"{"a":"\ud83d\u0041"}"#,
            br#"{"a":"\ud83d\"}"#,
            br#"{"a":"\x"}"#,
            br#"{"a":"\u12"}"#,
            b"{\"a\":\"raw\nnewline\"}",
            br#"{"a":1}{"b":2}"#,
            br#"["not an object"]"#,
            br#"{"a":"unterminated}"#,
            br#"{"a":tru}"#,
            b"this line is not JSON",
            b"",
        ];
        for case in cases {
            let serde_ok =
                matches!(serde_json::from_slice::<serde_json::Value>(case), Ok(serde_json::Value::Object(_)));
            assert_eq!(is_json_object(case), serde_ok, "{}", String::from_utf8_lossy(case));
        }
    }

    /// Found by fuzzing (link_message): a host's event with a `payload`
    /// nested 41 deep was journaled by the gateway, then read back as
    /// damaged (a gap, the run degraded) after the gateway restarted.
    #[test]
    fn whatever_serde_json_parses_reads_back_intact() {
        for depth in [40, 126, 127, 128] {
            let line = format!(
                r#"{{"runId":"r","seq":1,"type":"progress","payload":{}{}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            );
            if serde_json::from_str::<serde_json::Value>(&line).is_ok() {
                assert!(event_seq(line.as_bytes()).is_some(), "depth {depth} read back as damaged");
            }
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let deep = format!("{}{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
        assert!(!is_json_object(deep.as_bytes()));
    }
}
