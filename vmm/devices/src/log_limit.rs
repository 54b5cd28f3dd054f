//! Rate limiting for log lines a guest can trigger.
//!
//! A hostile guest can make a device fail on every request; logging each failure would let
//! it flood the host's logs. [`LogLimiter`] lets a burst through, then at most a few lines per
//! second, and reports how many it suppressed when it lets the next one through.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket for log lines.
#[derive(Debug)]
pub struct LogLimiter {
    inner: Mutex<Bucket>,
    suppressed: AtomicU64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Option<Instant>,
}

const BURST: f64 = 10.0;
const PER_SECOND: f64 = 2.0;

impl LogLimiter {
    /// A limiter with a burst of ten lines and two lines per second after that.
    pub const fn new() -> Self {
        LogLimiter {
            inner: Mutex::new(Bucket {
                tokens: BURST,
                last: None,
            }),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Returns `Some(n)` when a line may be logged now, `n` being the number of lines
    /// suppressed since the last one that was; `None` when this one must be dropped.
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Option<u64> {
        let mut bucket = match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(last) = bucket.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * PER_SECOND).min(BURST);
        }
        bucket.last = Some(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new()
    }
}

/// Logs a warning through a static per-call-site [`LogLimiter`].
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LIMITER: $crate::log_limit::LogLimiter = $crate::log_limit::LogLimiter::new();
        if let Some(suppressed) = LIMITER.check() {
            if suppressed > 0 {
                log::warn!("({} similar messages suppressed) {}", suppressed, format_args!($($arg)+));
            } else {
                log::warn!($($arg)+);
            }
        }
    }};
}

/// How long to wait before the bucket refills one line: exposed for tests.
pub const REFILL_INTERVAL: Duration = Duration::from_millis((1000.0 / PER_SECOND) as u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_limited_then_reports_suppressed() {
        let limiter = LogLimiter::new();
        let start = Instant::now();
        for _ in 0..10 {
            assert_eq!(limiter.check_at(start), Some(0));
        }
        assert_eq!(limiter.check_at(start), None);
        assert_eq!(limiter.check_at(start), None);
        assert_eq!(limiter.check_at(start + REFILL_INTERVAL), Some(2));
    }
}
