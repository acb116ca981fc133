//! Which gateway URL the link tries next, and how long it waits first.
//!
//! The URLs are tried in turn: a connect that fails, or a connection that
//! drops, moves on to the next URL at once. Only when a whole round (every
//! URL once) has brought no stable connection does the link wait, with a
//! jittered backoff. The next round starts at the URL that last worked, so
//! a host goes back to the gateway it was on before trying the others.
//!
//! The numbers, and why:
//! - `BACKOFF_MIN` 250 ms, doubling to `BACKOFF_MAX` 2 s, each wait drawn
//!   between half and all of it (`jitter`): a host whose gateway is down
//!   retries every 1–2 s once the outage is past its first second or so.
//!   When the gateway returns, a host's next attempt is at most 2 s away
//!   (0.75 s on average), which leaves most of the 5 s budget of issue 16
//!   ("all hosts caught up within 5 s of the gateway returning") for the
//!   handshake and the replay of what was journaled meanwhile. The old cap
//!   of 30 s could leave a host idle for 30 s after the gateway was back.
//! - Not lower: a failed attempt is cheap (a refused TCP connect), but when
//!   the gateway comes back every host arrives within one retry interval.
//!   With the jitter, N hosts arrive spread over about a second and a half
//!   rather than in lock-step; a shorter cap would squeeze the same crowd of
//!   handshakes (TLS ones on `wss://`) into a shorter window.
//! - `STABLE_AFTER` 10 s: a connection that lasted this long resets the
//!   backoff and starts a fresh round. One that dropped sooner counts as a
//!   failed attempt of the current round, so a gateway that accepts and then
//!   drops at once cannot make the link spin without waiting.

use std::time::Duration;

/// The first wait after a round in which every URL failed.
pub(super) const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// The longest wait between rounds: a host retries at least every 2 s.
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A connection that lasted this long resets the backoff.
pub(super) const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Failed rounds after which only every this many-th is logged at `warn`
/// (at 2 s a round, about once a minute), so a long outage does not flood the log.
const LOUD_EVERY: u32 = 30;

/// What the link does next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// Connect to the URL at this index now.
    Try(usize),
    /// A whole round failed: wait this long, then ask again.
    Wait(Duration),
}

/// The choice of URL and the backoff between rounds.
#[derive(Debug)]
pub(super) struct Rotation {
    /// How many URLs there are (at least one).
    len: usize,
    /// The URL to try next.
    next: usize,
    /// The URL that last gave a connection: a round after a wait starts there.
    preferred: usize,
    /// Attempts in the current round that gave no stable connection.
    failed: usize,
    /// Rounds in a row that ended in a wait (for the log's volume).
    failed_rounds: u32,
    backoff: Duration,
}

impl Rotation {
    pub(super) fn new(len: usize) -> Self {
        Rotation { len: len.max(1), next: 0, preferred: 0, failed: 0, failed_rounds: 0, backoff: BACKOFF_MIN }
    }

    /// What to do now that the link is down: the next URL, or a wait if
    /// every URL has failed since the last wait or stable connection.
    pub(super) fn next(&mut self) -> Next {
        if self.failed < self.len {
            return Next::Try(self.next);
        }
        self.failed = 0;
        self.failed_rounds = self.failed_rounds.saturating_add(1);
        self.next = self.preferred;
        let wait = jitter(self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        Next::Wait(wait)
    }

    /// Connecting to `url` failed.
    pub(super) fn failed(&mut self, url: usize) {
        self.failed += 1;
        self.next = (url + 1) % self.len;
    }

    /// A connection to `url` is up.
    pub(super) fn connected(&mut self, url: usize) {
        self.preferred = url;
    }

    /// The connection to `url` ended after `lasted`: go on to the next URL.
    pub(super) fn dropped(&mut self, url: usize, lasted: Duration) {
        if lasted >= STABLE_AFTER {
            self.failed = 0;
            self.failed_rounds = 0;
            self.backoff = BACKOFF_MIN;
        } else {
            self.failed += 1;
        }
        self.next = (url + 1) % self.len;
    }

    /// Whether a failure now is worth a `warn` line: the first rounds of an
    /// outage, then one round in `LOUD_EVERY`.
    pub(super) fn loud(&self) -> bool {
        self.failed_rounds < 3 || self.failed_rounds.is_multiple_of(LOUD_EVERY)
    }
}

/// Between half and all of `d`: spreads reconnects of many hosts.
pub(super) fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = if getrandom::fill(&mut b).is_ok() { u16::from_le_bytes(b) } else { u16::MAX / 2 };
    d / 2 + d.mul_f64(f64::from(r) / f64::from(u16::MAX) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(next: Next) -> Duration {
        match next {
            Next::Wait(d) => d,
            other => panic!("expected a wait, got {other:?}"),
        }
    }

    #[test]
    fn jitter_stays_within_half_to_full() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(2));
            assert!(j >= Duration::from_secs(1) && j <= Duration::from_secs(2), "{j:?}");
        }
    }

    #[test]
    fn failures_move_on_at_once_and_wait_only_after_a_whole_round() {
        let mut r = Rotation::new(3);
        assert_eq!(r.next(), Next::Try(0));
        r.failed(0);
        assert_eq!(r.next(), Next::Try(1));
        r.failed(1);
        assert_eq!(r.next(), Next::Try(2));
        r.failed(2);
        let d = wait(r.next());
        assert!(d >= BACKOFF_MIN / 2 && d <= BACKOFF_MIN, "{d:?}");
        // Nothing ever worked: the next round starts at the first URL.
        assert_eq!(r.next(), Next::Try(0));
    }

    #[test]
    fn the_next_round_starts_at_the_url_that_worked() {
        let mut r = Rotation::new(3);
        r.failed(0);
        assert_eq!(r.next(), Next::Try(1));
        r.connected(1);
        r.dropped(1, STABLE_AFTER);
        // A drop goes on to the next URL at once, then round the others.
        assert_eq!(r.next(), Next::Try(2));
        r.failed(2);
        assert_eq!(r.next(), Next::Try(0));
        r.failed(0);
        assert_eq!(r.next(), Next::Try(1));
        r.failed(1);
        wait(r.next());
        assert_eq!(r.next(), Next::Try(1), "after the wait: back to the one that worked");
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_a_stable_link_resets_it() {
        let mut r = Rotation::new(1);
        let mut longest = Duration::ZERO;
        for _ in 0..20 {
            assert_eq!(r.next(), Next::Try(0));
            r.failed(0);
            let d = wait(r.next());
            assert!(d <= BACKOFF_MAX, "{d:?}");
            longest = longest.max(d);
        }
        assert!(longest >= BACKOFF_MAX / 2, "{longest:?}");
        assert!(!r.loud() || r.failed_rounds.is_multiple_of(LOUD_EVERY));
        r.connected(0);
        r.dropped(0, STABLE_AFTER);
        assert_eq!(r.next(), Next::Try(0), "a stable link that drops is retried at once");
        r.failed(0);
        let d = wait(r.next());
        assert!(d <= BACKOFF_MIN, "reset to the minimum: {d:?}");
        assert!(r.loud());
    }

    #[test]
    fn a_link_that_drops_at_once_counts_as_a_failure() {
        let mut r = Rotation::new(2);
        r.connected(0);
        r.dropped(0, Duration::from_millis(10));
        assert_eq!(r.next(), Next::Try(1));
        r.connected(1);
        r.dropped(1, Duration::from_millis(10));
        wait(r.next());
        assert_eq!(r.next(), Next::Try(1));
    }
}
