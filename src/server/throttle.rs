//! How fast anyone may guess passwords: after [`FREE_LOGIN_FAILURES`]
//! failed logins from one address, or for one user name, the next attempt
//! from it (or for it) is refused unheard until a wait that doubles with
//! each further failure, up to [`MAX_LOGIN_WAIT`]. A successful login
//! clears its address and user.
//!
//! Counting per user name as well as per address means an attacker with
//! many addresses still gets a few guesses a minute at one account; the
//! price is that they can also make its owner wait up to
//! [`MAX_LOGIN_WAIT`], which is why the wait is capped low instead of
//! locking the account. Refusals during a wait are not stored as events
//! (the failures that caused it were), so a flood of them adds nothing to
//! the log.
//!
//! This module counts and answers "wait"; it never checks a password.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Failed logins from one address, or for one user, before any wait.
pub const FREE_LOGIN_FAILURES: u32 = 5;
/// The first wait; each further failure doubles it.
pub const FIRST_LOGIN_WAIT: Duration = Duration::from_secs(1);
/// The longest wait.
pub const MAX_LOGIN_WAIT: Duration = Duration::from_secs(30);
/// How long a failure is remembered without another one.
pub const LOGIN_FAILURE_MEMORY: Duration = Duration::from_secs(15 * 60);
/// The most addresses and names remembered at once, so that guesses from
/// ever new addresses cannot grow the table without bound.
pub const MAX_REMEMBERED_LOGIN_KEYS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Address(IpAddr),
    User(String),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    wait_until: Instant,
}

/// The failed logins of one endpoint.
#[derive(Debug, Clone, Default)]
pub struct LoginThrottle {
    failures: Arc<Mutex<HashMap<Key, Failures>>>,
}

fn keys(address: IpAddr, user: &str) -> [Key; 2] {
    [Key::Address(address), Key::User(user.to_string())]
}

/// The wait after the `count`th failure in a row.
fn wait_after(count: u32) -> Duration {
    if count < FREE_LOGIN_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (count - FREE_LOGIN_FAILURES).min(16);
    FIRST_LOGIN_WAIT.saturating_mul(1 << doublings).min(MAX_LOGIN_WAIT)
}

impl LoginThrottle {
    /// `Err(wait)` when `user` from `address` must wait before trying again.
    pub fn check(&self, address: IpAddr, user: &str, now: Instant) -> Result<(), Duration> {
        let failures = self.failures.lock().expect("login throttle");
        let wait = keys(address, user)
            .iter()
            .filter_map(|key| failures.get(key))
            .map(|f| f.wait_until.saturating_duration_since(now))
            .max()
            .unwrap_or_default();
        if wait.is_zero() { Ok(()) } else { Err(wait) }
    }

    /// Counts a failed login of `user` from `address`.
    pub fn failed(&self, address: IpAddr, user: &str, now: Instant) {
        let mut failures = self.failures.lock().expect("login throttle");
        if failures.len() + 2 > MAX_REMEMBERED_LOGIN_KEYS {
            failures.retain(|_, f| now.saturating_duration_since(f.last) < LOGIN_FAILURE_MEMORY);
        }
        for key in keys(address, user) {
            let known = failures.get(&key).copied();
            if known.is_none() && failures.len() >= MAX_REMEMBERED_LOGIN_KEYS {
                continue;
            }
            let count = match known {
                Some(f) if now.saturating_duration_since(f.last) < LOGIN_FAILURE_MEMORY => f.count + 1,
                _ => 1,
            };
            failures.insert(key, Failures { count, last: now, wait_until: now + wait_after(count) });
        }
    }

    /// Forgets the failures of `user` and of `address`: they logged in.
    pub fn succeeded(&self, address: IpAddr, user: &str) {
        let mut failures = self.failures.lock().expect("login throttle");
        for key in keys(address, user) {
            failures.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_start_after_the_free_failures_and_double_up_to_the_cap() {
        let waits: Vec<u64> = (1..=12).map(|n| wait_after(n).as_secs()).collect();
        assert_eq!(waits, [0, 0, 0, 0, 1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(wait_after(u32::MAX), MAX_LOGIN_WAIT);
    }

    #[test]
    fn an_address_or_a_user_is_made_to_wait_and_a_login_clears_it() {
        let throttle = LoginThrottle::default();
        let (attacker, other) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let now = Instant::now();
        for _ in 0..FREE_LOGIN_FAILURES {
            assert_eq!(throttle.check(attacker, "alice", now), Ok(()));
            throttle.failed(attacker, "alice", now);
        }
        assert_eq!(throttle.check(attacker, "bob", now), Err(FIRST_LOGIN_WAIT), "the address waits");
        assert_eq!(throttle.check(other, "alice", now), Err(FIRST_LOGIN_WAIT), "the user waits");
        assert_eq!(throttle.check(other, "bob", now), Ok(()));
        assert_eq!(throttle.check(attacker, "bob", now + FIRST_LOGIN_WAIT), Ok(()), "until the wait is over");
        throttle.failed(attacker, "alice", now + FIRST_LOGIN_WAIT);
        assert_eq!(throttle.check(attacker, "bob", now + FIRST_LOGIN_WAIT), Err(FIRST_LOGIN_WAIT * 2));
        throttle.succeeded(attacker, "alice");
        assert_eq!(throttle.check(attacker, "alice", now + FIRST_LOGIN_WAIT), Ok(()));
        // Failures long ago start the count again.
        let later = now + LOGIN_FAILURE_MEMORY * 2;
        throttle.failed(other, "carol", now);
        for _ in 0..FREE_LOGIN_FAILURES - 1 {
            throttle.failed(other, "carol", later);
        }
        assert_eq!(throttle.check(other, "carol", later), Ok(()));
    }

    #[test]
    fn the_table_stays_bounded() {
        let throttle = LoginThrottle::default();
        let now = Instant::now();
        for i in 0..(MAX_REMEMBERED_LOGIN_KEYS as u32 / 2 + 10) {
            throttle.failed(IpAddr::from(i.to_be_bytes()), &format!("u{i}"), now);
        }
        assert!(throttle.failures.lock().unwrap().len() <= MAX_REMEMBERED_LOGIN_KEYS);
    }
}
