//! Admission before authentication: how many connections may be in their
//! handshake at once, in all and from one address, and who makes room.
//!
//! A connection that has not authenticated costs the server a socket and a
//! task but proves nothing, so it gets its own, smaller table than the
//! sessions do. When the table is full, a new connection evicts the
//! *oldest* handshake: a real client finishes in milliseconds, so the
//! oldest are the ones that sit silent (slowloris). OpenSSH's
//! `MaxStartups` drops *new* connections at random instead, because it
//! cannot tell its pre-auth children apart; dropping at random gives a
//! good client a chance that shrinks with the attacker's share of the
//! table, while oldest-first serves any client that completes its
//! handshake before a whole table's worth of new connections arrives.
//! Past a cap of handshakes from one address, new ones from
//! it are refused outright, so one address cannot churn the table.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// The handshake table.
#[derive(Debug)]
pub(super) struct Startups {
    table: Mutex<Table>,
    max: usize,
    per_source: usize,
}

#[derive(Debug, Default)]
struct Table {
    next: u64,
    /// Oldest first: id, source, and the token that evicts it.
    live: VecDeque<(u64, IpAddr, CancellationToken)>,
    by_source: HashMap<IpAddr, usize>,
}

impl Table {
    fn forget(&mut self, ip: IpAddr) {
        if let Some(n) = self.by_source.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.by_source.remove(&ip);
            }
        }
    }
}

/// A connection's place in the handshake table, given up when dropped.
#[derive(Debug)]
pub(super) struct Startup {
    startups: Arc<Startups>,
    id: u64,
    ip: IpAddr,
    evicted: CancellationToken,
}

impl Startup {
    /// Completes when a newer connection took this one's place.
    pub async fn evicted(&self) {
        self.evicted.cancelled().await
    }
}

impl Drop for Startup {
    fn drop(&mut self) {
        let mut table = self.startups.table.lock().expect("startups poisoned");
        // An evicted entry was removed, and its source forgotten, already.
        if let Some(at) = table.live.iter().position(|(id, ..)| *id == self.id) {
            table.live.remove(at);
            table.forget(self.ip);
        }
    }
}

impl Startups {
    /// A table for `max` handshakes at once, `per_source` from one address.
    pub fn new(max: usize, per_source: usize) -> Startups {
        Startups { table: Mutex::default(), max: max.max(1), per_source: per_source.max(1) }
    }

    /// Admits a connection from `ip` to its handshake, evicting the oldest
    /// handshake if the table is full.
    ///
    /// # Errors
    ///
    /// How many handshakes `ip` has running, if that is its limit already.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Startup, usize> {
        let mut table = self.table.lock().expect("startups poisoned");
        let from_ip = table.by_source.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.per_source {
            return Err(from_ip);
        }
        if table.live.len() >= self.max {
            if let Some((_, old, token)) = table.live.pop_front() {
                token.cancel();
                table.forget(old);
            }
        }
        let id = table.next;
        table.next += 1;
        let evicted = CancellationToken::new();
        table.live.push_back((id, ip, evicted.clone()));
        *table.by_source.entry(ip).or_default() += 1;
        Ok(Startup { startups: self.clone(), id, ip, evicted })
    }

    /// Handshakes in progress.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().expect("startups poisoned").live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn a_full_table_evicts_its_oldest() {
        let s = Arc::new(Startups::new(3, 2));
        let a = s.admit(ip(1)).unwrap();
        let b = s.admit(ip(2)).unwrap();
        let c = s.admit(ip(3)).unwrap();
        assert!(!a.evicted.is_cancelled());
        let d = s.admit(ip(4)).unwrap();
        assert!(a.evicted.is_cancelled(), "the oldest made room");
        assert!(!b.evicted.is_cancelled() && !c.evicted.is_cancelled() && !d.evicted.is_cancelled());
        assert_eq!(s.len(), 3);
        drop(a);
        assert_eq!(s.len(), 3, "an evicted entry is not removed twice");
        drop((b, c, d));
        assert_eq!(s.len(), 0);
        assert!(s.table.lock().unwrap().by_source.is_empty());
    }

    #[test]
    fn one_source_is_capped() {
        let s = Arc::new(Startups::new(10, 2));
        let a = s.admit(ip(1)).unwrap();
        let _b = s.admit(ip(1)).unwrap();
        assert_eq!(s.admit(ip(1)).unwrap_err(), 2);
        assert!(s.admit(ip(2)).is_ok(), "other sources are not");
        drop(a);
        assert!(s.admit(ip(1)).is_ok(), "a slot freed is a slot");
    }
}
