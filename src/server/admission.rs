//! Admission before authentication: which connections the server holds
//! before they have proved anything, how many, and who makes room.
//!
//! What a real client does that a flood of idle sockets does not is speak
//! at once: it sends its preface the moment it connects (and, with a
//! key, its TLS hello the moment it has the server's preface). So a
//! connection passes two sets on its way in, and readiness, not arrival
//! order, moves it from one to the next:
//!
//! 1. **The silent set** ([`Silent`]): every accepted native connection,
//!    from the moment it is accepted until it has sent its whole preface,
//!    been answered with the server's, and (with a key) sent its first
//!    TLS record (the hello) whole. The server holds nothing for it but a socket
//!    and a small task, so the set is large ([`DEFAULT_MAX_SILENT`](super::DEFAULT_MAX_SILENT),
//!    sized down to a quarter of the open-file limit, as is the set of
//!    connections silent after their preface), with a share per source
//!    address. When it is full (or a source's share is), a newcomer is
//!    always let in and the *oldest* silent connection (of that source,
//!    or of all) is evicted: asked to leave the set now. If its bytes have
//!    arrived meanwhile (its task had not run yet), leaving means going
//!    on, as if it had not been asked; otherwise it is closed, told
//!    "server busy" while it has not had the server's preface yet. No
//!    minimum age: a silent connection blocks nobody by being evicted
//!    young, since one that speaks goes on, and a newcomer is never turned
//!    away, so nothing an attacker holds open without speaking can keep a
//!    client that speaks out. When the process runs out of file
//!    descriptors, the oldest silent connection is evicted too (see
//!    `accept` in `server/mod.rs`).
//! 2. **The handshake table** ([`Startups`]): connections that have
//!    spoken, for TLS and the key proof, which cost the server memory and
//!    CPU: small ([`DEFAULT_MAX_STARTUPS`](super::DEFAULT_MAX_STARTUPS) in
//!    all, a share per address). When it is full, a newcomer evicts the
//!    *oldest* handshake (of its address, or of all) that has been at it
//!    for [`EVICT_AFTER`]: a real client finishes in milliseconds, so
//!    those are the ones that stall mid-handshake (slowloris). If no
//!    handshake is that old, the burst is real, and the newcomer waits for
//!    a place (up to its handshake deadline) in a queue whose places are
//!    handed to waiting sources in turn ([`Queue`]); a full queue
//!    ([`MAX_WAITING`]) makes room from the source with most waiters,
//!    never by closing the newcomer. A key-less server has no table: its
//!    handshake ends with the prefaces.
//!
//! OpenSSH's `MaxStartups` drops *new* connections at random instead,
//! because it cannot tell its pre-auth children apart: that gives a good
//! client a chance that shrinks with the attacker's share, and drops good
//! clients of a legitimate burst too. An earlier framewire put every
//! connection in the table at once, silent or not, and let the rest wait
//! in arrival order: about 1,100 silent sockets, reopened whenever they
//! were closed, kept the waiting queue full and every new connection,
//! good clients included, was closed at once; 400 delayed a good client
//! by 8.6 s. The per-source shares keep one address from churning the
//! other addresses' entries; nobody is turned away at the door, so a good
//! client behind the same address (a NAT) still gets in.
//!
//! What is left: a connection that speaks and then stalls *inside* TLS or
//! the key proof holds a table place until it is evicted; a flood of
//! those, faster than the table's turnover (its size per [`EVICT_AFTER`]),
//! can still make good clients wait, up to their deadline (docs/SECURITY.md).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long a handshake must have been under way before a newer
/// connection may evict it.
pub const EVICT_AFTER: Duration = Duration::from_millis(500);

/// The most connections that wait for a place in the table at once.
/// A newcomer past it is never turned away: the oldest waiter of the
/// source with the most waiters gives up its turn instead. So one source
/// may fill the queue alone (a burst from behind one NAT), and a flood
/// from any number of sources pushes out its own waiters before a client
/// that waits alone from its address.
pub const MAX_WAITING: usize = 1024;

/// Why and when a connection is asked to leave its set: cancelled to
/// evict it, with the reason set first.
#[derive(Debug, Clone, Default)]
struct Eviction(Arc<(CancellationToken, OnceLock<String>)>);

impl Eviction {
    fn evict(&self, why: String) {
        let _ = self.0 .1.set(why);
        self.0 .0.cancel();
    }

    async fn wait(&self) {
        self.0 .0.cancelled().await
    }

    fn reason(&self) -> &str {
        self.0 .1.get().map_or("server busy", String::as_str)
    }

    #[cfg(test)]
    fn is_evicted(&self) -> bool {
        self.0 .0.is_cancelled()
    }
}

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
    /// Oldest first.
    live: VecDeque<Entry>,
    by_source: HashMap<IpAddr, usize>,
    queue: Queue,
}

/// Connections waiting for a place in the table. A freed place is handed
/// to one waiter, never raced for: the first waiter of the first source
/// in turn that may take it (its source below its table share, or with
/// an entry old enough to evict). Sources take turns, so a client from
/// one address waits behind at most one waiter of each other address,
/// however many each holds; within a source, first come, first served.
#[derive(Debug, Default)]
struct Queue {
    next: u64,
    /// Waiters by source, oldest first.
    by_source: HashMap<IpAddr, VecDeque<Waiter>>,
    /// Sources with waiters, in the order they take their turns.
    turns: VecDeque<IpAddr>,
    len: usize,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    /// Woken when it may be its turn.
    wake: Arc<Notify>,
    /// Cancelled when a newcomer takes its place in the queue.
    eviction: Eviction,
}

impl Queue {
    /// Queues a waiter from `ip`, making room as [`MAX_WAITING`] says.
    fn push(&mut self, ip: IpAddr) -> (u64, Arc<Notify>, Eviction) {
        if self.len >= MAX_WAITING {
            // The source with the most waiters (the oldest first waiter
            // among equals).
            let heaviest =
                self.by_source.iter().filter_map(|(ip, q)| Some((q.len(), Reverse(q.front()?.id), *ip))).max();
            if let Some((_, _, ip)) = heaviest {
                let why = format!("server busy: {} connections wait for a handshake", self.len);
                self.evict_first(ip, why);
            }
        }
        let id = self.next;
        self.next += 1;
        let (wake, eviction) = (Arc::new(Notify::new()), Eviction::default());
        let waiters = self.by_source.entry(ip).or_default();
        if waiters.is_empty() {
            self.turns.push_back(ip);
        }
        waiters.push_back(Waiter { id, wake: wake.clone(), eviction: eviction.clone() });
        self.len += 1;
        (id, wake, eviction)
    }

    /// Evicts the oldest waiter from `ip`, telling it why.
    fn evict_first(&mut self, ip: IpAddr, why: String) {
        if let Some(id) = self.by_source.get(&ip).and_then(|q| q.front()).map(|w| w.id) {
            if let Some(w) = self.remove(ip, id) {
                w.eviction.evict(why);
            }
        }
    }

    /// Takes waiter `id` of `ip` out of the queue (its source goes to the
    /// back of the turns if it still has waiters, when `id` was its
    /// first: it has had its turn).
    fn remove(&mut self, ip: IpAddr, id: u64) -> Option<Waiter> {
        let waiters = self.by_source.get_mut(&ip)?;
        let at = waiters.iter().position(|w| w.id == id)?;
        let waiter = waiters.remove(at)?;
        self.len -= 1;
        let empty = waiters.is_empty();
        if at == 0 || empty {
            if let Some(turn) = self.turns.iter().position(|t| *t == ip) {
                self.turns.remove(turn);
            }
            if empty {
                self.by_source.remove(&ip);
            } else {
                self.turns.push_back(ip);
            }
        }
        Some(waiter)
    }

    /// The waiter whose turn it is, among sources that `may_take`.
    fn next_up(&self, may_take: impl Fn(IpAddr) -> bool) -> Option<(IpAddr, &Waiter)> {
        self.turns.iter().filter(|ip| may_take(**ip)).find_map(|ip| Some((*ip, self.by_source.get(ip)?.front()?)))
    }
}

#[derive(Debug)]
struct Entry {
    id: u64,
    ip: IpAddr,
    since: Instant,
    eviction: Eviction,
}

impl Table {
    /// Evicts the entry at `at`, telling it why.
    fn evict(&mut self, at: usize, why: String) {
        if let Some(old) = self.live.remove(at) {
            old.eviction.evict(why);
            self.forget(old.ip);
        }
    }

    /// Whether a connection from `ip` may take a place at `now`: a free
    /// one, or one an old enough handshake is evicted from (of this
    /// source if it has its share already, else of all).
    fn may_take(&self, ip: IpAddr, now: Instant, max: usize, per_source: usize) -> bool {
        let old = |e: &Entry| now.saturating_duration_since(e.since) >= EVICT_AFTER;
        if self.by_source.get(&ip).copied().unwrap_or(0) >= per_source {
            self.live.iter().any(|e| e.ip == ip && old(e))
        } else {
            self.live.len() < max || self.live.iter().any(old)
        }
    }

    /// Wakes the waiter whose turn it is, if any may take a place now.
    fn wake_next(&self, max: usize, per_source: usize) {
        let now = Instant::now();
        if let Some((_, w)) = self.queue.next_up(|ip| self.may_take(ip, now, max, per_source)) {
            w.wake.notify_one();
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
    eviction: Eviction,
}

impl Startup {
    /// Completes when a newer connection took this one's place.
    pub async fn evicted(&self) {
        self.eviction.wait().await
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
        table.wake_next(self.startups.max, self.startups.per_source);
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

/// A place in the queue, given up when dropped (admitted, evicted, or
/// the waiting future dropped: a handshake deadline, a shutdown).
struct Queued<'a> {
    startups: &'a Startups,
    ip: IpAddr,
    id: u64,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        let mut table = self.startups.table.lock().expect("startups poisoned");
        if table.queue.remove(self.ip, self.id).is_some() {
            table.wake_next(self.startups.max, self.startups.per_source);
        }
    }
}

impl Startups {
    /// A table for `max` handshakes at once, `per_source` from one address.
    pub fn new(max: usize, per_source: usize) -> Startups {
        Startups { table: Mutex::default(), max: max.max(1), per_source: per_source.max(1) }
    }

    /// Admits a connection from `ip` to its handshake, waiting for a place
    /// until `deadline` if it must (in the queue, in turn: see [`Queue`]);
    /// `None` if none came, or a newcomer took its place in the queue.
    pub async fn admit(self: &Arc<Self>, ip: IpAddr, deadline: tokio::time::Instant) -> Option<Startup> {
        let ip = source(ip);
        let (id, wake, eviction) = {
            let mut table = self.table.lock().expect("startups poisoned");
            if table.queue.len == 0 {
                if let Some(startup) = self.place(&mut table, ip, Instant::now()) {
                    return Some(startup);
                }
            }
            table.queue.push(ip)
        };
        let _queued = Queued { startups: self, ip, id };
        let admitted = async {
            loop {
                {
                    let mut table = self.table.lock().expect("startups poisoned");
                    let now = Instant::now();
                    let table = &mut *table;
                    let up = table.queue.next_up(|ip| table.may_take(ip, now, self.max, self.per_source));
                    if up.is_some_and(|(_, w)| w.id == id) {
                        let startup = self.place(table, ip, now).expect("it may take a place");
                        table.queue.remove(ip, id);
                        // A second place may be free for the next in turn.
                        table.wake_next(self.max, self.per_source);
                        return Some(startup);
                    }
                }
                // Its turn, or an entry comes of age to be evicted.
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep(EVICT_AFTER / 4) => {}
                    () = eviction.wait() => return None,
                }
            }
        };
        tokio::time::timeout_at(deadline, admitted).await.ok().flatten()
    }

    /// Admits a connection from `ip` now, if nobody waits and there is a
    /// place for it (as [`place`](Self::place)).
    #[cfg(test)]
    fn try_admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Option<Startup> {
        let mut table = self.table.lock().expect("startups poisoned");
        if table.queue.len > 0 {
            return None;
        }
        self.place(&mut table, source(ip), now)
    }

    /// Gives a connection from `ip` (a source) a place in `table`, if there
    /// is one: a free one, or one an old enough handshake is evicted from
    /// (of this source if it has its share already, else of all).
    fn place(self: &Arc<Self>, table: &mut Table, ip: IpAddr, now: Instant) -> Option<Startup> {
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
        let eviction = Eviction::default();
        table.live.push_back(Entry { id, ip, since: now, eviction: eviction.clone() });
        *table.by_source.entry(ip).or_default() += 1;
        Some(Startup { startups: self.clone(), id, ip, eviction })
    }

    /// Handshakes in progress.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().expect("startups poisoned").live.len()
    }
}

/// The two sets a native connection passes before it has spoken (see the
/// module's documentation): one until its preface is in, one (with a
/// key) from the server's preface until its TLS hello is in. Kept apart,
/// so that a flood of either churns only its own: a client that has sent
/// its preface waits one round trip for its hello, and silent sockets
/// reopened in a tight loop could otherwise evict it within that time.
#[derive(Debug)]
pub(super) struct Door {
    /// Until the preface is in.
    pub silent: Arc<Silent>,
    /// From the server's preface until the TLS hello is in.
    pub answered: Arc<Silent>,
}

impl Door {
    /// Evicts the oldest connection that has sent nothing (or nothing
    /// after its preface), saying `why`; false if there is none.
    pub fn evict_oldest(&self, why: &str) -> bool {
        self.silent.evict_oldest(why) || self.answered.evict_oldest(why)
    }
}

/// The silent set (see the module's documentation): connections that have
/// not spoken yet, oldest first, in all and by source.
#[derive(Debug)]
pub(super) struct Silent {
    set: Mutex<SilentSet>,
    max: usize,
    per_source: usize,
    /// What its connections are, for the eviction's reason: "silent
    /// connections".
    kind: &'static str,
}

#[derive(Debug, Default)]
struct SilentSet {
    next: u64,
    /// By id, which is arrival order: the first is the oldest.
    live: BTreeMap<u64, (IpAddr, Eviction)>,
    by_source: HashMap<IpAddr, BTreeSet<u64>>,
}

impl SilentSet {
    /// Evicts `id`, telling it why.
    fn evict(&mut self, id: u64, why: String) {
        if let Some((_, eviction)) = self.remove(id) {
            eviction.evict(why);
        }
    }

    fn remove(&mut self, id: u64) -> Option<(IpAddr, Eviction)> {
        let (ip, eviction) = self.live.remove(&id)?;
        if let Some(ids) = self.by_source.get_mut(&ip) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_source.remove(&ip);
            }
        }
        Some((ip, eviction))
    }
}

/// A connection's place in the silent set, given up when dropped (when it
/// has spoken, or is closed).
#[derive(Debug)]
pub(super) struct SilentPlace {
    silent: Arc<Silent>,
    id: u64,
    eviction: Eviction,
}

impl SilentPlace {
    /// Completes when the connection is asked to leave the set: it is the
    /// oldest of a full set (or of its source's full share), or the
    /// process is out of descriptors.
    pub async fn evicted(&self) {
        self.eviction.wait().await
    }

    /// Why it was evicted, for the client: "server busy: …".
    pub fn reason(&self) -> &str {
        self.eviction.reason()
    }
}

impl Drop for SilentPlace {
    fn drop(&mut self) {
        // An evicted entry was removed already; ids are never reused.
        self.silent.set.lock().expect("silent set poisoned").remove(self.id);
    }
}

impl Silent {
    /// A set of `max` connections at once, `per_source` from one source,
    /// called `kind` in eviction reasons ("silent connections").
    pub fn new(max: usize, per_source: usize, kind: &'static str) -> Silent {
        let max = max.max(1);
        Silent { set: Mutex::default(), max, per_source: per_source.clamp(1, max), kind }
    }

    /// As [`new`](Self::new), cut to fit in `budget` descriptors (every
    /// connection in the set is one), the share keeping its fraction.
    pub fn sized(max: usize, per_source: usize, budget: u64, kind: &'static str) -> Silent {
        let fit = usize::try_from(budget).unwrap_or(usize::MAX).max(1);
        if max <= fit {
            return Silent::new(max, per_source, kind);
        }
        let share = (per_source as u128 * fit as u128 / max.max(1) as u128) as usize;
        Silent::new(fit, share, kind)
    }

    /// The set's bounds: in all, and from one source.
    pub fn bounds(&self) -> (usize, usize) {
        (self.max, self.per_source)
    }

    /// Lets a new connection from `ip` in, always: if its source has its
    /// share already, that source's oldest silent connection is evicted;
    /// else if the set is full, the oldest of all.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> SilentPlace {
        let ip = source(ip);
        let mut set = self.set.lock().expect("silent set poisoned");
        let from_ip = set.by_source.get(&ip).map_or(0, BTreeSet::len);
        if from_ip >= self.per_source {
            let oldest = *set.by_source[&ip].first().expect("a full share is not empty");
            set.evict(oldest, format!("server busy: {from_ip} {} from {ip}", self.kind));
        } else if set.live.len() >= self.max {
            let oldest = *set.live.keys().next().expect("a full set is not empty");
            let why = format!("server busy: {} {}", set.live.len(), self.kind);
            set.evict(oldest, why);
        }
        let id = set.next;
        set.next += 1;
        let eviction = Eviction::default();
        set.live.insert(id, (ip, eviction.clone()));
        set.by_source.entry(ip).or_default().insert(id);
        SilentPlace { silent: self.clone(), id, eviction }
    }

    /// Evicts the oldest silent connection, saying `why`; false if there
    /// is none.
    pub fn evict_oldest(&self, why: &str) -> bool {
        let mut set = self.set.lock().expect("silent set poisoned");
        let Some(&oldest) = set.live.keys().next() else { return false };
        set.evict(oldest, why.to_owned());
        true
    }

    /// Silent connections now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.set.lock().expect("silent set poisoned").live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{DEFAULT_MAX_SILENT, DEFAULT_MAX_SILENT_PER_SOURCE};
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
        assert!(!a.eviction.is_evicted());
        let d = at(&s, ip(4), t0, 600).unwrap();
        assert!(a.eviction.is_evicted(), "the oldest made room");
        assert_eq!(a.eviction.reason(), "server busy: 3 connections are in their handshake");
        assert!(!b.eviction.is_evicted() && !c.eviction.is_evicted() && !d.eviction.is_evicted());
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
        assert!(held.eviction.is_evicted(), "the same host's oldest made room");
    }

    #[test]
    fn one_source_evicts_only_its_own() {
        let t0 = Instant::now();
        let s = Arc::new(Startups::new(10, 2));
        let other = at(&s, ip(2), t0, 0).unwrap();
        let a = at(&s, ip(1), t0, 0).unwrap();
        let b = at(&s, ip(1), t0, 400).unwrap();
        let c = at(&s, ip(1), t0, 600).unwrap();
        assert!(a.eviction.is_evicted(), "its own oldest");
        assert_eq!(a.eviction.reason(), "server busy: 2 connections from 127.0.0.1 are in their handshake");
        assert!(!other.eviction.is_evicted() && !b.eviction.is_evicted() && !c.eviction.is_evicted());
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

    #[tokio::test]
    async fn a_waiter_given_up_is_not_counted_as_waiting() {
        let s = Arc::new(Startups::new(1, 1));
        let _held = s.admit(ip(1), tokio::time::Instant::now()).await.unwrap();
        // Dropped mid-wait, as a handshake deadline or a shutdown drops it.
        let far = tokio::time::Instant::now() + Duration::from_secs(60);
        let _ = tokio::time::timeout(Duration::from_millis(20), s.admit(ip(2), far)).await;
        let table = s.table.lock().unwrap();
        assert_eq!(table.queue.len, 0, "a leaked place would fill MAX_WAITING for good");
        assert!(table.queue.by_source.is_empty() && table.queue.turns.is_empty());
    }

    /// Queues `n` waiters from `from` for a place in `s` (whose table is
    /// full), each a task answering whether it got one, in order.
    async fn queue_up(s: &Arc<Startups>, from: IpAddr, n: usize) -> Vec<tokio::task::JoinHandle<Option<Startup>>> {
        let mut waiters = Vec::new();
        for _ in 0..n {
            let s = s.clone();
            let far = tokio::time::Instant::now() + Duration::from_secs(30);
            waiters.push(tokio::spawn(async move { s.admit(from, far).await }));
            // Each queued before the next (arrival order is the order),
            // and well within EVICT_AFTER, so that nobody is old enough
            // to be evicted from the table.
            tokio::task::yield_now().await;
        }
        waiters
    }

    /// Issue 28, point 1, the review's H1: connections that speak and
    /// stall fill the queue; a newcomer is never closed at once, the
    /// oldest waiter gives up its turn, and freed places go to sources in
    /// turn, so a client from another address is next after at most one
    /// waiter of each source.
    #[tokio::test]
    async fn a_full_queue_evicts_its_oldest_and_sources_take_turns() {
        let s = Arc::new(Startups::new(1, 1));
        let far = tokio::time::Instant::now() + Duration::from_secs(30);
        let held = s.admit(ip(9), far).await.unwrap();
        let flood = queue_up(&s, ip(1), 3).await;
        let good = queue_up(&s, ip(2), 1).await;
        assert_eq!(s.table.lock().unwrap().queue.len, 4);
        // One place: the first source's first waiter; its source goes to
        // the back, so the next place is the other source's.
        drop(held);
        let mut flood = flood.into_iter();
        let first = flood.next().unwrap().await.unwrap().expect("first in turn");
        drop(first);
        let good = good.into_iter().next().unwrap().await.unwrap().expect("the other source's turn");
        drop(good);
        let second = flood.next().unwrap().await.unwrap().expect("then the first source again");
        assert!(!second.eviction.is_evicted());
        drop(second);
        assert!(flood.next().unwrap().await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_full_queue_makes_room_from_the_source_with_most_waiters() {
        let s = Arc::new(Startups::new(1, 1));
        let far = tokio::time::Instant::now() + Duration::from_secs(30);
        let _held = s.admit(ip(9), far).await.unwrap();
        let alone = queue_up(&s, ip(2), 1).await;
        let mut flood = queue_up(&s, ip(1), MAX_WAITING - 1).await;
        let other = queue_up(&s, ip(3), 2).await;
        assert!(flood.remove(0).await.unwrap().is_none(), "the heaviest source's oldest gave up its turn");
        assert!(flood.remove(0).await.unwrap().is_none(), "and its next");
        let table = s.table.lock().unwrap();
        assert_eq!(table.queue.len, MAX_WAITING);
        assert_eq!(table.queue.by_source[&ip(2)].len(), 1, "a client waiting alone keeps its turn");
        assert_eq!(table.queue.by_source[&ip(3)].len(), 2);
        drop(table);
        for w in flood.into_iter().chain(alone).chain(other) {
            assert!(!w.is_finished());
            w.abort();
        }
    }

    #[test]
    fn a_full_silent_set_lets_the_newcomer_in_and_evicts_its_oldest_at_once() {
        let s = Arc::new(Silent::new(3, 3, "silent connections"));
        let a = s.enter(ip(1));
        let b = s.enter(ip(2));
        let c = s.enter(ip(3));
        let d = s.enter(ip(4));
        assert!(a.eviction.is_evicted(), "the oldest, however young");
        assert_eq!(a.reason(), "server busy: 3 silent connections");
        assert!(!b.eviction.is_evicted() && !c.eviction.is_evicted() && !d.eviction.is_evicted());
        assert_eq!(s.len(), 3);
        // b speaks and leaves: a place is free, nobody is evicted.
        drop(b);
        let e = s.enter(ip(5));
        assert!(!c.eviction.is_evicted() && !e.eviction.is_evicted());
        // Then c is the oldest.
        let _f = s.enter(ip(6));
        assert!(c.eviction.is_evicted() && !d.eviction.is_evicted());
        drop(a);
        assert_eq!(s.len(), 3, "an evicted place is not given up twice");
        drop((c, d, e, _f));
        assert_eq!(s.len(), 0);
        assert!(s.set.lock().unwrap().by_source.is_empty());
    }

    #[test]
    fn a_silent_source_at_its_share_evicts_its_own_oldest() {
        let s = Arc::new(Silent::new(10, 2, "silent connections"));
        let other = s.enter(ip(2));
        let a = s.enter(ip(1));
        let b = s.enter(ip(1));
        let c = s.enter(ip(1));
        assert!(a.eviction.is_evicted(), "its own oldest");
        assert_eq!(a.reason(), "server busy: 2 silent connections from 127.0.0.1");
        assert!(!other.eviction.is_evicted(), "older, but another source's");
        assert!(!b.eviction.is_evicted() && !c.eviction.is_evicted());
        // The set as a whole fills from other sources: the oldest of all
        // goes, whoever's it is.
        let rest: Vec<_> = (3..10).map(|i| s.enter(ip(i))).collect();
        assert_eq!(s.len(), 10);
        let _new = s.enter(ip(20));
        assert!(other.eviction.is_evicted(), "the oldest of a full set");
        assert!(!b.eviction.is_evicted() && rest.iter().all(|r| !r.eviction.is_evicted()));
    }

    #[test]
    fn a_silent_set_fits_in_its_descriptors() {
        let s = Silent::sized(DEFAULT_MAX_SILENT, DEFAULT_MAX_SILENT_PER_SOURCE, 256, "");
        assert_eq!(s.bounds(), (256, 64), "the share keeps its quarter");
        let s = Silent::sized(DEFAULT_MAX_SILENT, DEFAULT_MAX_SILENT_PER_SOURCE, 1 << 18, "");
        assert_eq!(s.bounds(), (DEFAULT_MAX_SILENT, DEFAULT_MAX_SILENT_PER_SOURCE));
        assert_eq!(Silent::sized(100, 500, 1 << 18, "").bounds(), (100, 100), "a share is at most the set");
        assert_eq!(Silent::sized(100, 25, 0, "").bounds(), (1, 1));
    }

    #[test]
    fn out_of_descriptors_the_oldest_silent_connection_goes() {
        let s = Arc::new(Silent::new(10, 10, "silent connections"));
        assert!(!s.evict_oldest("no descriptors"), "nothing to evict");
        let a = s.enter(ip(1));
        let b = s.enter(ip(2));
        assert!(s.evict_oldest("server busy: out of file descriptors"));
        assert!(a.eviction.is_evicted() && !b.eviction.is_evicted());
        assert_eq!(a.reason(), "server busy: out of file descriptors");
        assert_eq!(s.len(), 1);
    }
}
