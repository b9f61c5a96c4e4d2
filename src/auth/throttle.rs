//! Slowing down repeated failed logins from one address: each failure doubles the delay before the
//! next failure is reported, so guessing passwords gets slow while a typo costs a moment.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAX_DELAY: Duration = Duration::from_secs(5);
const FORGET_AFTER: Duration = Duration::from_secs(600);
const MAX_TRACKED: usize = 100_000;

pub struct FailureThrottle {
    base: Duration,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl FailureThrottle {
    pub fn new(base: Duration) -> Self {
        FailureThrottle {
            base,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Records a failure and returns how long to wait before reporting it.
    pub fn failure(&self, ip: IpAddr) -> Duration {
        let now = Instant::now();
        let Ok(mut map) = self.failures.lock() else {
            return MAX_DELAY;
        };
        if map.len() >= MAX_TRACKED {
            map.retain(|_, (_, last)| now.duration_since(*last) < FORGET_AFTER);
        }
        let entry = map.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= FORGET_AFTER {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        let shift = (entry.0 - 1).min(16);
        self.base.saturating_mul(1 << shift).min(MAX_DELAY)
    }

    /// Forgets the failures of an address after a successful login.
    pub fn success(&self, ip: IpAddr) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_caps_and_resets() {
        let t = FailureThrottle::new(Duration::from_millis(100));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(t.failure(ip), Duration::from_millis(100));
        assert_eq!(t.failure(ip), Duration::from_millis(200));
        assert_eq!(t.failure(ip), Duration::from_millis(400));
        for _ in 0..10 {
            t.failure(ip);
        }
        assert_eq!(t.failure(ip), MAX_DELAY);
        t.success(ip);
        assert_eq!(t.failure(ip), Duration::from_millis(100));
    }
}
