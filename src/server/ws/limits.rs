//! What a client may send: message size, rate and nesting depth, and the
//! buffers tungstenite reads into.

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Subscriptions one `/ws` session may hold at once: each can pin a
/// delivery of history in memory while its client is slow.
pub(super) const MAX_SUBSCRIPTIONS: usize = 64;

/// tungstenite's read buffer, allocated up front per connection (its default
/// is 128 KiB). Clients send a few small messages; larger ones still work,
/// read in several chunks. 4 KiB → 1 KiB took idle RSS per subscriber at
/// 10 000 from 13.8 to 10.7 KB (BENCHMARKS.md); 256 bytes holds an auth or
/// subscribe message whole.
const READ_BUFFER: usize = 256;

/// What a client may send before it is authenticated, in all: enough for
/// an auth message with a large JWT, and a small fraction of what one
/// message may be once authenticated. (A flood of unauthenticated peers
/// sending unfinished fragmented messages is what this bounds.)
pub(in crate::server) const AUTH_READ_BUDGET: usize = 16 * 1024;

/// tungstenite refuses a frame, and a message while it is still being
/// assembled from fragments, once it passes `max_frame_bytes`; the session
/// answers `message-too-large` and drains what the client still sends, so
/// the close does not become a reset that loses the error on the way.
pub(crate) fn ws_config(max_frame_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        // tungstenite only writes pongs and close replies here: pass them on at once.
        .write_buffer_size(0)
        .max_message_size(Some(max_frame_bytes))
        .max_frame_size(Some(max_frame_bytes))
}

/// Token bucket: `rate` messages per second, bursts up to `burst`.
pub(in crate::server) struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    pub(in crate::server) fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        RateLimiter { rate: f64::from(rate), burst, tokens: burst, last: Instant::now() }
    }

    pub(in crate::server) fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Deepest nesting of objects/arrays in `json` (strings skipped), without parsing it.
pub(crate) fn json_depth(json: &[u8]) -> usize {
    let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for &b in json {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn depth_ignores_brackets_in_strings() {
        assert_eq!(json_depth(br#"{"a":[1,{"b":"[[[{{{"}]}"#), 3);
        assert_eq!(json_depth(br#""\"[""#), 0);
        assert_eq!(json_depth(b"[[[[[]]]]]"), 5);
    }

    #[test]
    fn rate_limiter_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(10, 3);
        assert!(r.allow(t0) && r.allow(t0) && r.allow(t0));
        assert!(!r.allow(t0));
        assert!(r.allow(t0 + Duration::from_millis(100)));
        assert!(!r.allow(t0 + Duration::from_millis(100)));
    }
}
