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
//!    sized down to a quarter of the open-file limit), with a share per source
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
//!    *oldest* handshake (of its address if it has its share, else of the
//!    address holding the most places) that has been at it for
//!    [`EVICT_AFTER`]: a real client finishes in milliseconds, so those
//!    are the ones that stall mid-handshake (slowloris). If no handshake
//!    is that old, the burst is real, and the newcomer waits for a place
//!    (up to its handshake deadline). Places go to addresses in turn: the
//!    next one to the waiting address holding the fewest, then the one
//!    served longest ago (never served: first; an address that comes
//!    back keeps its last turn), then the one that came first, never by
//!    the address's value: a client from an address of its own goes
//!    before a flood's addresses, which are served over and over. On a full
//!    queue, of the addresses with the most waiters, the one last in turn
//!    gives up a waiter. Within one address,
//!    its waiters race for its turn (any of them may take it, a newcomer
//!    too): an order within one address (first come, or random) made a
//!    good client wait behind a flood of wrong keys from its own address
//!    (tests/auth.rs). At most [`MAX_WAITING`] wait at once; one more
//!    makes the *oldest waiter of the address with the most waiters* give
//!    up, never the newcomer. A key-less server has no table: its
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
//! the key proof holds a table place until it is evicted. A flood of
//! those from other addresses delays a client by about [`EVICT_AFTER`]
//! (its address's turn comes first, then an entry must come of age); a
//! flood from the client's own address (a NAT, or the attacker's own
//! machine) is told apart from it by nothing, and the client races the
//! flood's waiters for that address's turns (docs/SECURITY.md).

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

/// The handshake table, and the connections waiting for a place in it.
#[derive(Debug)]
pub(super) struct Startups {
    table: Mutex<Table>,
    max: usize,
    per_source: usize,
    max_waiting: usize,
    /// [`EVICT_AFTER`]; longer in the tests that are about the queue, so
    /// that a slow machine does not evict what they hold.
    evict_after: Duration,
}

#[derive(Debug, Default)]
struct Table {
    /// Ids for entries and waiters, in arrival order.
    next: u64,
    /// Counts places given, to stamp a source with its last turn.
    clock: u64,
    /// Oldest first.
    live: VecDeque<Entry>,
    /// Every source with a place or a waiter.
    sources: HashMap<IpAddr, Source>,
    /// Waiting connections by id, oldest first.
    waiters: BTreeMap<u64, (IpAddr, Eviction)>,
    /// The sources with waiters, whose turn it is first: fewest places
    /// held, then the one served longest ago (never: first), then the one
    /// that came first ([`Table::key`]).
    turns: BTreeSet<Turn>,
    /// When sources the table forgot were last served: one that comes
    /// back takes its turn after those served longer ago, as if it had
    /// stayed (a flood's sources come and go as their sockets do).
    recent: HashMap<IpAddr, u64>,
}

/// A source's place in the turns: places held, when last served (0:
/// never), when it came, and the source.
type Turn = (usize, u64, u64, IpAddr);

/// The most forgotten sources whose last turn is remembered; past it the
/// memory starts over.
const RECENT_MAX: usize = 16_384;

/// What the table knows of one source address.
#[derive(Debug, Default)]
struct Source {
    places: usize,
    waiting: usize,
    /// `clock` when it was last given a place (0: never).
    served: u64,
    /// `clock` when it came to the table.
    came: u64,
    /// Wakes this source's waiters: it is their turn.
    wake: Arc<Notify>,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    ip: IpAddr,
    since: Instant,
    eviction: Eviction,
}

impl Table {
    /// Where `ip` stands in [`Table::turns`], if it has waiters.
    fn key(&self, ip: IpAddr) -> Option<Turn> {
        let s = self.sources.get(&ip)?;
        (s.waiting > 0).then_some((s.places, s.served, s.came, ip))
    }

    /// Changes what is known of `ip`, keeping `turns` in step and
    /// forgetting a source with neither places nor waiters.
    fn update(&mut self, ip: IpAddr, change: impl FnOnce(&mut Source)) {
        if let Some(old) = self.key(ip) {
            self.turns.remove(&old);
        }
        // A source new to the table (or come back after it was
        // forgotten) is stamped with its arrival, and keeps its last turn:
        // ties never go by the address's value.
        if !self.sources.contains_key(&ip) {
            self.clock += 1;
            let served = self.recent.remove(&ip).unwrap_or(0);
            self.sources.insert(ip, Source { served, came: self.clock, ..Source::default() });
        }
        let source = self.sources.get_mut(&ip).expect("inserted above");
        change(source);
        if source.places == 0 && source.waiting == 0 {
            let served = source.served;
            self.sources.remove(&ip);
            if served > 0 {
                if self.recent.len() >= RECENT_MAX {
                    self.recent.clear();
                }
                self.recent.insert(ip, served);
            }
        }
        if let Some(new) = self.key(ip) {
            self.turns.insert(new);
        }
    }

    /// Whether `ip` may take a place now: no source with waiters has
    /// fewer places, or as many and was served longer ago.
    fn turn_of(&self, ip: IpAddr) -> bool {
        // A source the table does not know comes after every one there
        // that was served as long ago as it was.
        let mine = match self.sources.get(&ip) {
            Some(s) => (s.places, s.served, s.came, ip),
            None => (0, self.recent.get(&ip).copied().unwrap_or(0), self.clock + 1, ip),
        };
        self.turns.first().is_none_or(|first| mine <= *first)
    }

    /// Wakes the waiters of the source whose turn it is.
    fn wake_first(&self) {
        if let Some(s) = self.turns.first().and_then(|(_, _, _, ip)| self.sources.get(ip)) {
            s.wake.notify_waiters();
        }
    }

    /// Evicts the entry at `at`, telling it why.
    fn evict(&mut self, at: usize, why: String) {
        if let Some(old) = self.live.remove(at) {
            old.eviction.evict(why);
            self.update(old.ip, |s| s.places -= 1);
        }
    }

    /// Removes waiter `id`, if it still waits.
    fn leave(&mut self, id: u64) -> Option<Eviction> {
        let (ip, eviction) = self.waiters.remove(&id)?;
        let first = self.turns.first().copied();
        self.update(ip, |s| s.waiting -= 1);
        if self.turns.first().copied() != first {
            self.wake_first();
        }
        Some(eviction)
    }
}

/// Where a newcomer's place in the table comes from.
enum Room {
    Free,
    /// The entry at this index is evicted, told why.
    Evict(usize, String),
}

/// A connection's place in the handshake table, given up when dropped.
#[derive(Debug)]
pub(super) struct Startup {
    startups: Arc<Startups>,
    id: u64,
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
        // An evicted entry was removed, and its source told, already: its
        // place went to whoever evicted it.
        if let Some(at) = table.live.iter().position(|e| e.id == self.id) {
            let gone = table.live.remove(at).expect("found");
            table.update(gone.ip, |s| s.places -= 1);
            table.wake_first();
        }
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

/// A connection's place among those waiting, given up when dropped (also
/// when the waiting future is dropped: a handshake deadline, a shutdown).
struct Waiting<'a> {
    startups: &'a Startups,
    id: u64,
    eviction: Eviction,
    wake: Arc<Notify>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.startups.table.lock().expect("startups poisoned").leave(self.id);
    }
}

impl Startups {
    /// A table for `max` handshakes at once, `per_source` from one address.
    pub fn new(max: usize, per_source: usize) -> Startups {
        Startups {
            table: Mutex::default(),
            max: max.max(1),
            per_source: per_source.max(1),
            max_waiting: MAX_WAITING,
            evict_after: EVICT_AFTER,
        }
    }

    /// Admits a connection from `ip` to its handshake, waiting for a place
    /// until `deadline` if it must; `None` if none came in time, or if it
    /// was made to give up its wait for a newer one.
    pub async fn admit(self: &Arc<Self>, ip: IpAddr, deadline: tokio::time::Instant) -> Option<Startup> {
        if let Some(startup) = self.try_admit(ip, Instant::now()) {
            return Some(startup);
        }
        let waiting = self.wait(source(ip));
        let admitted = async {
            loop {
                let woken = waiting.wake.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                if let Some(startup) = self.try_admit(ip, Instant::now()) {
                    return Some(startup);
                }
                // Its turn with a place free, an entry come of age to be
                // evicted, or made to give up its wait.
                tokio::select! {
                    _ = tokio::time::timeout(self.evict_after / 4, woken) => {}
                    () = waiting.eviction.wait() => return None,
                }
            }
        };
        tokio::time::timeout_at(deadline, admitted).await.ok().flatten()
    }

    /// Enters a connection from source `ip` among the waiting: when
    /// [`MAX_WAITING`] wait already, the oldest waiter of the source with
    /// the most waiters gives up its wait (never the newcomer, so nothing
    /// held open can keep a connection out; a source that floods the queue
    /// churns its own waiters).
    fn wait(&self, ip: IpAddr) -> Waiting<'_> {
        let mut table = self.table.lock().expect("startups poisoned");
        if table.waiters.len() >= self.max_waiting {
            // Of the sources with the most waiters, the one last in turn
            // (most places held, else come or served most recently):
            // never chosen by the order of a hash map, where a source with
            // one waiter, a client's, could be picked.
            let most = table.sources.values().map(|s| s.waiting).max().unwrap_or(0);
            let heaviest = table
                .turns
                .iter()
                .rev()
                .map(|&(_, _, _, ip)| ip)
                .find(|ip| table.sources.get(ip).is_some_and(|s| s.waiting == most))
                .expect("waiters have sources in turn");
            let oldest = table.waiters.iter().find(|(_, (from, _))| *from == heaviest).map(|(&id, _)| id);
            if let Some(eviction) = oldest.and_then(|id| table.leave(id)) {
                eviction.evict(format!("server busy: {most} connections from {heaviest} wait for a handshake"));
            }
        }
        let id = table.next;
        table.next += 1;
        let eviction = Eviction::default();
        table.waiters.insert(id, (ip, eviction.clone()));
        table.update(ip, |s| s.waiting += 1);
        let wake = table.sources[&ip].wake.clone();
        Waiting { startups: self, id, eviction, wake }
    }

    /// Admits a connection from `ip` now, if it is its source's turn and
    /// there is a place for it ([`Startups::room`]).
    fn try_admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Option<Startup> {
        let ip = source(ip);
        let mut table = self.table.lock().expect("startups poisoned");
        if !table.turn_of(ip) {
            // The turn is another source's: wake its waiters if there is
            // a place they could take (an entry came of age).
            if let Some(&(_, _, _, first)) = table.turns.first() {
                if self.room(&table, first, now).is_some() {
                    table.wake_first();
                }
            }
            return None;
        }
        match self.room(&table, ip, now)? {
            Room::Free => {}
            Room::Evict(at, why) => table.evict(at, why),
        }
        let id = table.next;
        table.next += 1;
        table.clock += 1;
        let served = table.clock;
        let eviction = Eviction::default();
        table.live.push_back(Entry { id, ip, since: now, eviction: eviction.clone() });
        table.update(ip, |s| {
            s.places += 1;
            s.served = served;
        });
        Some(Startup { startups: self.clone(), id, eviction })
    }

    /// The place source `ip` could take now: a free one, or one an old
    /// enough handshake is evicted from (of this source if it has its
    /// share already, else the oldest of the source that holds the most).
    fn room(&self, table: &Table, ip: IpAddr, now: Instant) -> Option<Room> {
        let held = table.sources.get(&ip).map_or(0, |s| s.places);
        let old = |e: &Entry| now.saturating_duration_since(e.since) >= self.evict_after;
        if held >= self.per_source {
            let at = table.live.iter().position(|e| e.ip == ip && old(e))?;
            Some(Room::Evict(at, format!("server busy: {held} connections from {ip} are in their handshake")))
        } else if table.live.len() >= self.max {
            let places = |e: &Entry| table.sources.get(&e.ip).map_or(0, |s| s.places);
            let (at, _) = table
                .live
                .iter()
                .enumerate()
                .filter(|(_, e)| old(e))
                .min_by_key(|&(at, e)| (std::cmp::Reverse(places(e)), at))?;
            Some(Room::Evict(at, format!("server busy: {} connections are in their handshake", table.live.len())))
        } else {
            Some(Room::Free)
        }
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

    /// A connection from 127.0.0.`from` waiting in the background for a
    /// place until `far`; its place, if it got one.
    fn waiter(s: &Arc<Startups>, from: u8, far: tokio::time::Instant) -> tokio::task::JoinHandle<Option<Startup>> {
        let s = s.clone();
        tokio::spawn(async move { s.admit(ip(from), far).await })
    }

    /// A table whose entries never come of age to be evicted within a
    /// test: the tests of the queue, on the real clock, hold places while
    /// a loaded machine may take more than [`EVICT_AFTER`].
    fn queue(max: usize, per_source: usize) -> Startups {
        Startups { evict_after: Duration::from_secs(600), ..Startups::new(max, per_source) }
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
        assert!(s.table.lock().unwrap().sources.is_empty());
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
        let s = Arc::new(queue(1, 1));
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
        let s = Arc::new(queue(1, 1));
        let _held = s.admit(ip(1), tokio::time::Instant::now()).await.unwrap();
        // Dropped mid-wait, as a handshake deadline or a shutdown drops it.
        let far = tokio::time::Instant::now() + Duration::from_secs(60);
        let _ = tokio::time::timeout(Duration::from_millis(20), s.admit(ip(2), far)).await;
        let table = s.table.lock().unwrap();
        assert!(table.waiters.is_empty() && table.turns.is_empty(), "a leaked waiter would hold a place in the queue");
        assert_eq!(table.sources.len(), 1, "the waiter's source forgotten");
    }

    /// A place freed goes to the source whose turn it is, the one holding
    /// fewest places, not to whoever of all the waiters runs first.
    #[tokio::test]
    async fn a_freed_place_goes_to_the_source_holding_fewest() {
        let s = Arc::new(queue(2, 2));
        let far = tokio::time::Instant::now() + Duration::from_secs(5);
        let (a, _b) = (s.admit(ip(1), far).await.unwrap(), s.admit(ip(1), far).await.unwrap());
        let waiter = |from: u8| waiter(&s, from, far);
        // Two from the address holding both places wait first, then one
        // from an address holding none.
        let (heavy1, heavy2) = (waiter(1), waiter(1));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let light = waiter(2);
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(a);
        let light = tokio::time::timeout(Duration::from_millis(100), light).await.expect("served at once");
        assert!(light.unwrap().is_some());
        assert!(!heavy1.is_finished() && !heavy2.is_finished(), "the heavy source waits its turn");
        heavy1.abort();
        heavy2.abort();
    }

    /// With the queue full, a newcomer is never the one turned away: the
    /// oldest waiter of the source with the most waiters gives up its
    /// wait, told why.
    #[tokio::test]
    async fn a_full_queue_makes_the_heaviest_sources_oldest_give_up_never_the_newcomer() {
        let mut s = queue(1, 1);
        s.max_waiting = 4;
        let s = Arc::new(s);
        let far = tokio::time::Instant::now() + Duration::from_secs(5);
        let _held = s.admit(ip(9), far).await.unwrap();
        let waiter = |from: u8| waiter(&s, from, far);
        let mut flood = Vec::new();
        for from in [1, 1, 2, 1] {
            flood.push(waiter(from));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A fifth, from a third address: the queue holds 4.
        let newcomer = waiter(3);
        let first = flood.remove(0);
        let gave_up = tokio::time::timeout(Duration::from_millis(200), first).await.expect("made to give up");
        assert!(gave_up.unwrap().is_none(), "the oldest of 127.0.0.1, the heaviest, gave up its wait");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!newcomer.is_finished() && flood.iter().all(|w| !w.is_finished()), "the rest still wait");
        {
            let table = s.table.lock().unwrap();
            assert_eq!(table.waiters.len(), 4);
            assert_eq!(table.sources[&ip(1)].waiting, 2);
        }
        // More from 127.0.0.1: each makes its own source's oldest give up.
        for _ in 0..3 {
            flood.push(waiter(1));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!newcomer.is_finished(), "a flood from another address never turns the newcomer away");
        assert!(!flood[1].is_finished(), "nor the other source's waiter");
        newcomer.abort();
        flood.iter().for_each(|w| w.abort());
    }

    /// Among sources holding as many places, a freed place goes to the one
    /// that came first, whatever the addresses (the review of issue 28's
    /// queue: ties went by address, so a flood from addresses below the
    /// client's always went first, and a newcomer from a low address
    /// jumped every waiter).
    #[tokio::test]
    async fn ties_go_by_arrival_never_by_address() {
        let s = Arc::new(queue(1, 1));
        let far = tokio::time::Instant::now() + Duration::from_secs(5);
        let held = s.admit(ip(9), far).await.unwrap();
        let waiter = |from: u8| waiter(&s, from, far);
        let first = waiter(200);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let second = waiter(2);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!s.table.lock().unwrap().turn_of(ip(1)), "an unknown low address does not jump the waiters");
        drop(held);
        let first = tokio::time::timeout(Duration::from_millis(200), first).await.expect("served at once");
        assert!(first.unwrap().is_some(), "127.0.0.200 came first");
        assert!(!second.is_finished(), "127.0.0.2 waits, though its address is lower");
        second.abort();
    }

    /// With the queue full of sources of one waiter each, the one that gives
    /// up is the newest source's, not one picked by a hash map's order (a
    /// client's, perhaps).
    #[tokio::test]
    async fn a_full_queue_of_single_waiters_drops_the_newest_source() {
        let mut s = queue(1, 1);
        s.max_waiting = 3;
        let s = Arc::new(s);
        let far = tokio::time::Instant::now() + Duration::from_secs(5);
        let _held = s.admit(ip(9), far).await.unwrap();
        let waiter = |from: u8| waiter(&s, from, far);
        let mut queued = Vec::new();
        for from in [5, 1, 3] {
            queued.push(waiter(from));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let newcomer = waiter(4);
        let gave_up =
            tokio::time::timeout(Duration::from_millis(200), queued.remove(2)).await.expect("made to give up");
        assert!(gave_up.unwrap().is_none(), "127.0.0.3, the newest, gave up its wait");
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(queued.iter().all(|w| !w.is_finished()) && !newcomer.is_finished(), "the older ones wait on");
        queued.iter().for_each(|w| w.abort());
        newcomer.abort();
    }

    /// When the table is full, the place a newcomer evicts is the oldest
    /// of the source holding the most, not the oldest of all.
    #[test]
    fn a_full_table_evicts_from_the_source_holding_most() {
        let t0 = Instant::now();
        let s = Arc::new(Startups::new(3, 2));
        let lone = at(&s, ip(1), t0, 0).unwrap();
        let a = at(&s, ip(2), t0, 100).unwrap();
        let b = at(&s, ip(2), t0, 200).unwrap();
        let _c = at(&s, ip(3), t0, 800).unwrap();
        assert!(a.eviction.is_evicted(), "the oldest of 127.0.0.2, which held two");
        assert!(!lone.eviction.is_evicted() && !b.eviction.is_evicted());
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
