//! Per-event rate limits of the `/workflow` namespace, and the fixed
//! bounds of a Socket.IO connection.
//!
//! Each limited event has its own budget per minute
//! (`[stream.socketio]`), refilled evenly: a client that spends its ten
//! `subscribe`s at once gets one more every six seconds. Going over is
//! answered with an `error` and costs the client nothing else; the
//! connection-wide message rate of `[stream]` still closes a flood.

use tokio::time::Instant;

use crate::config::SocketIoConfig;

/// Subscriptions one `/workflow` connection may hold at once.
pub(super) const MAX_SUBSCRIPTIONS: usize = 64;

/// The connection asks its feeds for more once less than this waits to be
/// written (as `ws::session`): a slow client's backlog stays in its
/// bounded hub queue, then in the journal.
pub(super) const REFILL_BELOW: usize = 64 * 1024;

/// The events that have their own budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Limited {
    Subscribe,
    Unsubscribe,
    Ping,
    GetStatus,
}

impl Limited {
    pub(super) fn name(self) -> &'static str {
        match self {
            Limited::Subscribe => "subscribe",
            Limited::Unsubscribe => "unsubscribe",
            Limited::Ping => "ping",
            Limited::GetStatus => "get_status",
        }
    }
}

/// One budget: `per_minute` events, refilled evenly.
#[derive(Debug)]
struct Bucket {
    per_minute: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(per_minute: u32, now: Instant) -> Self {
        let per_minute = f64::from(per_minute.max(1));
        Bucket { per_minute, tokens: per_minute, last: now }
    }

    fn take(&mut self, now: Instant) -> bool {
        let minutes = now.saturating_duration_since(self.last).as_secs_f64() / 60.0;
        self.last = now;
        self.tokens = (self.tokens + minutes * self.per_minute).min(self.per_minute);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A connection's budgets.
#[derive(Debug)]
pub(super) struct EventLimits {
    buckets: [Bucket; 4],
}

impl EventLimits {
    pub(super) fn new(cfg: &SocketIoConfig, now: Instant) -> Self {
        EventLimits {
            buckets: [
                Bucket::new(cfg.subscribe_per_minute, now),
                Bucket::new(cfg.unsubscribe_per_minute, now),
                Bucket::new(cfg.ping_per_minute, now),
                Bucket::new(cfg.get_status_per_minute, now),
            ],
        }
    }

    /// Spends one of `event`'s budget; false if there is none left.
    pub(super) fn allow(&mut self, event: Limited, now: Instant) -> bool {
        self.buckets[event as usize].take(now)
    }

    /// The configured budget of `event`, for the error message.
    pub(super) fn per_minute(&self, event: Limited) -> u32 {
        self.buckets[event as usize].per_minute as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_event_has_its_own_budget_refilled_over_the_minute() {
        let t0 = Instant::now();
        let mut l = EventLimits::new(&SocketIoConfig::default(), t0);
        for _ in 0..10 {
            assert!(l.allow(Limited::Subscribe, t0));
        }
        assert!(!l.allow(Limited::Subscribe, t0), "the 11th subscribe in a minute");
        assert!(l.allow(Limited::Ping, t0), "ping has its own budget");
        assert!(!l.allow(Limited::Subscribe, t0 + Duration::from_secs(5)));
        assert!(l.allow(Limited::Subscribe, t0 + Duration::from_secs(7)), "one back every 6 s");
        assert_eq!(l.per_minute(Limited::Unsubscribe), 20);
        for _ in 0..30 - 1 {
            assert!(l.allow(Limited::Ping, t0));
        }
        assert!(!l.allow(Limited::Ping, t0));
    }
}
