//! Admission before authentication: how many connections may be in their
//! handshake at once, in all and from one address, and who makes room.
//!
//! A connection that has not authenticated costs the server a socket and a
//! task but proves nothing, so it gets its own, smaller table than the
//! sessions do. When the table (or an address's share of it) is full, a
//! new connection evicts the *oldest* handshake (of that address, or of
//! all) that has been at it for [`EVICT_AFTER`]: a real client finishes in
//! milliseconds, so those are the ones that sit silent (slowloris). If no
//! handshake is that old, the burst is real, and the new connection waits
//! for a place (up to its handshake deadline; at most [`MAX_WAITING`]
//! wait at once, more are closed).
//!
//! OpenSSH's `MaxStartups` drops *new* connections at random instead,
//! because it cannot tell its pre-auth children apart: that gives a good
//! client a chance that shrinks with the attacker's share of the table,
//! and drops good clients of a legitimate burst too. Oldest-first serves
//! any client that completes its handshake in time, and a burst of honest
//! clients only waits. The per-address share keeps one address from
//! holding the whole table while others want in, and a flood from it
//! churns only its own entries; nobody is turned away at the door, so a
//! good client behind the same address (a NAT) still gets in.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long a handshake must have been under way before a newer
/// connection may evict it.
pub const EVICT_AFTER: Duration = Duration::from_millis(500);

/// The most connections that wait for a place in the table at once.
pub const MAX_WAITING: usize = 1024;

/// The handshake table.
#[derive(Debug)]
pub(super) struct Startups {
    table: Mutex<Table>,
    max: usize,
    per_source: usize,
    /// Signalled whenever a place is given up.
    freed: Notify,
    waiting: AtomicUsize,
}

#[derive(Debug, Default)]
struct Table {
    next: u64,
    /// Oldest first.
    live: VecDeque<Entry>,
    by_source: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    ip: IpAddr,
    since: Instant,
    /// Cancelled to evict it, with the reason set first.
    evicted: CancellationToken,
    reason: Arc<std::sync::OnceLock<String>>,
}

impl Table {
    /// Evicts the entry at `at`, telling it why.
    fn evict(&mut self, at: usize, why: String) {
        if let Some(old) = self.live.remove(at) {
            let _ = old.reason.set(why);
            old.evicted.cancel();
            self.forget(old.ip);
        }
    }

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
    reason: Arc<std::sync::OnceLock<String>>,
}

impl Startup {
    /// Completes when a newer connection took this one's place.
    pub async fn evicted(&self) {
        self.evicted.cancelled().await
    }

    /// Why it was evicted, for the client: "server busy: …".
    pub fn reason(&self) -> &str {
        self.reason.get().map_or("server busy", String::as_str)
    }
}

impl Drop for Startup {
    fn drop(&mut self) {
        let mut table = self.startups.table.lock().expect("startups poisoned");
        // An evicted entry was removed, and its source forgotten, already.
        if let Some(at) = table.live.iter().position(|e| e.id == self.id) {
            table.live.remove(at);
            table.forget(self.ip);
        }
        drop(table);
        self.startups.freed.notify_waiters();
    }
}

/// The source a per-address limit counts `ip` under: an IPv4 address as it
/// is (also when it comes IPv4-mapped), an IPv6 address by its /64, the
/// block one host or one customer is given, so that one machine cannot be
/// 2^64 sources.
pub(super) fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

impl Startups {
    /// A table for `max` handshakes at once, `per_source` from one address.
    pub fn new(max: usize, per_source: usize) -> Startups {
        Startups {
            table: Mutex::default(),
            max: max.max(1),
            per_source: per_source.max(1),
            freed: Notify::new(),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Admits a connection from `ip` to its handshake, waiting for a place
    /// until `deadline` if it must; `None` if none came, or too many wait.
    pub async fn admit(self: &Arc<Self>, ip: IpAddr, deadline: tokio::time::Instant) -> Option<Startup> {
        if let Some(startup) = self.try_admit(ip, Instant::now()) {
            return Some(startup);
        }
        if self.waiting.fetch_add(1, Relaxed) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Relaxed);
            return None;
        }
        let admitted = async {
            loop {
                let freed = self.freed.notified();
                tokio::pin!(freed);
                freed.as_mut().enable();
                if let Some(startup) = self.try_admit(ip, Instant::now()) {
                    return startup;
                }
                // A place frees, or an entry comes of age to be evicted.
                let _ = tokio::time::timeout(EVICT_AFTER / 4, freed).await;
            }
        };
        let admitted = tokio::time::timeout_at(deadline, admitted).await.ok();
        self.waiting.fetch_sub(1, Relaxed);
        admitted
    }

    /// Admits a connection from `ip` now, if there is a place for it: a
    /// free one, or one an old enough handshake is evicted from (of this
    /// address if it has its share already, else of all).
    fn try_admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Option<Startup> {
        let ip = source(ip);
        let mut table = self.table.lock().expect("startups poisoned");
        let from_ip = table.by_source.get(&ip).copied().unwrap_or(0);
        let old = |e: &Entry| now.saturating_duration_since(e.since) >= EVICT_AFTER;
        if from_ip >= self.per_source {
            let at = table.live.iter().position(|e| e.ip == ip && old(e))?;
            table.evict(at, format!("server busy: {from_ip} connections from {ip} are in their handshake"));
        } else if table.live.len() >= self.max {
            let at = table.live.iter().position(old)?;
            let why = format!("server busy: {} connections are in their handshake", table.live.len());
            table.evict(at, why);
        }
        let id = table.next;
        table.next += 1;
        let (evicted, reason) = (CancellationToken::new(), Arc::new(std::sync::OnceLock::new()));
        table.live.push_back(Entry { id, ip, since: now, evicted: evicted.clone(), reason: reason.clone() });
        *table.by_source.entry(ip).or_default() += 1;
        Some(Startup { startups: self.clone(), id, ip, evicted, reason })
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

    /// `try_admit` at a moment `ms` milliseconds after `t0`.
    fn at(s: &Arc<Startups>, ip: IpAddr, t0: Instant, ms: u64) -> Option<Startup> {
        s.try_admit(ip, t0 + Duration::from_millis(ms))
    }

    #[test]
    fn a_full_table_evicts_its_oldest_once_it_is_old_enough() {
        let t0 = Instant::now();
        let s = Arc::new(Startups::new(3, 2));
        let a = at(&s, ip(1), t0, 0).unwrap();
        let b = at(&s, ip(2), t0, 100).unwrap();
        let c = at(&s, ip(3), t0, 200).unwrap();
        assert!(at(&s, ip(4), t0, 300).is_none(), "a young burst waits, nobody evicted");
        assert!(!a.evicted.is_cancelled());
        let d = at(&s, ip(4), t0, 600).unwrap();
        assert!(a.evicted.is_cancelled(), "the oldest made room");
        assert_eq!(a.reason(), "server busy: 3 connections are in their handshake");
        assert!(!b.evicted.is_cancelled() && !c.evicted.is_cancelled() && !d.evicted.is_cancelled());
        assert_eq!(s.len(), 3);
        drop(a);
        assert_eq!(s.len(), 3, "an evicted entry is not removed twice");
        drop((b, c, d));
        assert_eq!(s.len(), 0);
        assert!(s.table.lock().unwrap().by_source.is_empty());
    }

    #[test]
    fn sources_are_hosts() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::7".parse().unwrap();
        assert_eq!(source(a), source(b), "one /64");
        assert_ne!(source(a), source("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(source("::ffff:127.0.0.2".parse().unwrap()), ip(2), "v4-mapped is v4");
        let t0 = Instant::now();
        let s = Arc::new(Startups::new(10, 1));
        let held = at(&s, a, t0, 0).unwrap();
        let _new = at(&s, b, t0, 600).unwrap();
        assert!(held.evicted.is_cancelled(), "the same host's oldest made room");
    }

    #[test]
    fn one_source_evicts_only_its_own() {
        let t0 = Instant::now();
        let s = Arc::new(Startups::new(10, 2));
        let other = at(&s, ip(2), t0, 0).unwrap();
        let a = at(&s, ip(1), t0, 0).unwrap();
        let b = at(&s, ip(1), t0, 400).unwrap();
        let c = at(&s, ip(1), t0, 600).unwrap();
        assert!(a.evicted.is_cancelled(), "its own oldest");
        assert_eq!(a.reason(), "server busy: 2 connections from 127.0.0.1 are in their handshake");
        assert!(!other.evicted.is_cancelled() && !b.evicted.is_cancelled() && !c.evicted.is_cancelled());
        assert!(at(&s, ip(1), t0, 700).is_none(), "b is too young to evict: wait");
        assert!(at(&s, ip(3), t0, 700).is_some(), "other addresses are not held up");
    }

    #[tokio::test]
    async fn a_waiting_connection_gets_the_place_freed() {
        let s = Arc::new(Startups::new(1, 1));
        let held = s.admit(ip(1), tokio::time::Instant::now()).await.unwrap();
        let s2 = s.clone();
        let waiter = tokio::spawn(async move {
            s2.admit(ip(2), tokio::time::Instant::now() + Duration::from_secs(5)).await.is_some()
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(held);
        assert!(waiter.await.unwrap());
    }
}
