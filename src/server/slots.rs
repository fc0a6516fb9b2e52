//! Who may hold a Postgres connection, and how many: clients that are
//! still logging in, and sessions that have logged in, are counted apart.
//!
//! A client logging in holds one of `max_connections` login slots, at most
//! half of them per address, and only for `connection::LOGIN_TIMEOUT`;
//! idle sockets from one address cannot fill the server. Loopback is not
//! limited per address: a pooler or TLS proxy on the server's host, or a
//! benchmark, brings every client from it, and whoever runs there is on the
//! server already. A logged-in session holds one of `max_connections` session
//! slots, of which [`RESERVED_ADMIN_SESSIONS`] only admins may take, so an
//! operator can still log in to see what fills the server (PostgreSQL's
//! `superuser_reserved_connections`).
//!
//! This module counts; it never decides who someone is.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Session slots kept for admins.
pub const RESERVED_ADMIN_SESSIONS: usize = 3;

/// The slots of one endpoint.
#[derive(Debug, Clone)]
pub struct Slots {
    logins: Arc<Semaphore>,
    logins_by_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max_logins_per_address: usize,
    sessions: Arc<Semaphore>,
    admin_sessions: Arc<Semaphore>,
}

/// A client's place while it logs in; given back when it logged in or left.
#[derive(Debug)]
pub struct LoginSlot {
    _permit: OwnedSemaphorePermit,
    address: IpAddr,
    by_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for LoginSlot {
    fn drop(&mut self) {
        let mut by_address = self.by_address.lock().expect("login slots");
        if let Some(count) = by_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                by_address.remove(&self.address);
            }
        }
    }
}

/// A logged-in session's place, held until the connection ends.
#[derive(Debug)]
pub struct SessionSlot {
    _permit: OwnedSemaphorePermit,
}

impl Slots {
    /// `max_connections` sessions (the admins' reserve among them; at least
    /// one slot is left to everyone) and as many clients logging in.
    pub fn new(max_connections: usize) -> Self {
        let max_connections = max_connections.max(1);
        let reserved = RESERVED_ADMIN_SESSIONS.min(max_connections - 1);
        Slots {
            logins: Arc::new(Semaphore::new(max_connections)),
            logins_by_address: Arc::default(),
            max_logins_per_address: (max_connections / 2).max(1),
            sessions: Arc::new(Semaphore::new(max_connections - reserved)),
            admin_sessions: Arc::new(Semaphore::new(reserved)),
        }
    }

    /// A login slot for a client from `address`, if one is free to it.
    pub fn login(&self, address: IpAddr) -> Option<LoginSlot> {
        let mut by_address = self.logins_by_address.lock().expect("login slots");
        let count = by_address.entry(address).or_insert(0);
        if *count >= self.max_logins_per_address && !address.is_loopback() {
            return None;
        }
        let permit = Arc::clone(&self.logins).try_acquire_owned().ok()?;
        *count += 1;
        Some(LoginSlot { _permit: permit, address, by_address: Arc::clone(&self.logins_by_address) })
    }

    /// Whether a session slot kept for admins is free.
    pub fn admin_slot_free(&self) -> bool {
        self.admin_sessions.available_permits() > 0
    }

    /// A session slot: any free one for an admin, a slot outside the
    /// admins' reserve for anyone else.
    pub fn session(&self, admin: bool) -> Option<SessionSlot> {
        let permit = Arc::clone(&self.sessions)
            .try_acquire_owned()
            .ok()
            .or_else(|| if admin { Arc::clone(&self.admin_sessions).try_acquire_owned().ok() } else { None })?;
        Some(SessionSlot { _permit: permit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_cannot_take_every_login_slot() {
        let slots = Slots::new(64);
        let attacker = IpAddr::from([10, 0, 0, 1]);
        let held: Vec<LoginSlot> = (0..32).map(|_| slots.login(attacker).unwrap()).collect();
        assert!(slots.login(attacker).is_none());
        let others: Vec<LoginSlot> = (0..32).map(|_| slots.login(IpAddr::from([10, 0, 0, 2])).unwrap()).collect();
        assert!(slots.login(IpAddr::from([10, 0, 0, 3])).is_none(), "64 in all");
        drop(held);
        assert!(slots.login(attacker).is_some());
        drop(others);
        let local = IpAddr::from([127, 0, 0, 1]);
        let from_loopback: Vec<LoginSlot> = (0..64).map(|_| slots.login(local).unwrap()).collect();
        assert_eq!(from_loopback.len(), 64);
    }

    #[test]
    fn the_last_sessions_are_kept_for_admins() {
        let slots = Slots::new(5);
        let users: Vec<SessionSlot> = (0..2).map(|_| slots.session(false).unwrap()).collect();
        assert!(slots.session(false).is_none(), "three of five are reserved");
        let admins: Vec<SessionSlot> = (0..3).map(|_| slots.session(true).unwrap()).collect();
        assert!(slots.session(true).is_none());
        drop(users);
        assert!(slots.session(false).is_some());
        drop(admins);
    }

    #[test]
    fn a_server_of_one_connection_lets_anyone_in() {
        let slots = Slots::new(1);
        let one = slots.session(false).unwrap();
        assert!(slots.session(true).is_none());
        drop(one);
    }
}
