//! The delta engine (src/delta) against rsync's delta algorithm, on the
//! same files in the same run: the three changes of issue 32 to one file
//! (1 % rewritten in scattered 10 KiB runs, 1,000 bytes inserted 1 MiB in,
//! 4 MiB appended), in /dev/shm.
//!
//! `cargo bench --bench delta` (env: FRAMEWIRE_BENCH_ROUNDS, default 3;
//! FRAMEWIRE_BENCH_MIB, the file's size, default 256). For each change
//! and round, in turn:
//!
//! - framewire: the receiver indexes the old file (`Indexer`), the sender
//!   encodes the new one against that signature (`Encoder`), the receiver
//!   rebuilds it (`Patcher`) and the result is checked byte for byte;
//!   the append is answered from the old file's length and hash alone
//!   (`Held::appended`). Reported: the bytes that would cross the link
//!   (signature frames, ops in their wire form) and the time of each step
//!   on one core; the time compared is the longer of index and encoding
//!   (on two machines they run at once: the sender cuts and hashes its
//!   file while the index comes) plus the rebuilding.
//! - rsync: `rsync --no-whole-file --ignore-times --stats NEW OLD_COPY`
//!   on the same machine, which runs the same delta algorithm as over a
//!   network (sender, generator, receiver in three processes; the new file
//!   built in a temporary file, as framewire builds its partial file);
//!   reported: its "Total bytes sent" + "received" and its wall time.
//!
//! Median and min–max over the rounds, and the ratio of medians. This
//! measures the engine, not the link: bench/wan.py (issue 32, point 4)
//! will time both tools over a shaped link. Figures go to
//! docs/BENCHMARKS.md.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use framewire::delta::{Action, Encoder, Held, Indexer, Layout, Op, Patcher};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Random bytes from a fixed seed.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn changed(old: &[u8], case: &str) -> Vec<u8> {
    let mut new = old.to_vec();
    match case {
        "scattered 1 %" => {
            let run = 10 << 10;
            let runs = new.len() / 100 / run;
            for k in 0..runs {
                let at = k * (new.len() / runs) + 4321;
                new[at..at + run].copy_from_slice(&noise(run, 1000 + k as u64));
            }
        }
        "insert 1,000 B" => {
            new.splice(1 << 20..1 << 20, noise(1000, 7));
        }
        _ => new.extend_from_slice(&noise(4 << 20, 8)),
    }
    new
}

/// Wire bytes, and seconds of framewire's three steps: the receiver's
/// index, the sender's encoding, the receiver's rebuilding.
fn framewire(old: &[u8], new: &[u8]) -> (u64, [f64; 3]) {
    const PIECE: usize = 256 << 10;
    let mut times = [0.0; 3];
    let mut wire = 0u64;
    let mut ops = Vec::new();
    // What the receiver holds comes from its hash cache: not timed.
    let held = Held { len: old.len() as u64, blake3: *blake3::hash(old).as_bytes() };
    // The append check costs the sender one hash of the prefix (timed as
    // its encoding).
    let mut start = Instant::now();
    let appended =
        (new.len() >= old.len()).then(|| held.appended(new.len() as u64, &blake3::hash(&new[..old.len()]))).flatten();
    let checked = start.elapsed().as_secs_f64();
    start = Instant::now();
    if let Some(copies) = appended {
        ops.extend(copies);
        ops.extend(new[old.len()..].chunks(framewire::delta::MAX_DATA).map(|d| Op::Data(d.to_vec())));
        wire += 48; // the receiver's length and hash
    } else {
        let layout = Layout::for_sizes(old.len() as u64, new.len() as u64);
        let mut indexer = Indexer::new(layout).unwrap();
        for piece in old.chunks(PIECE) {
            indexer.feed(piece).unwrap();
        }
        let sig = indexer.finish().unwrap();
        times[0] = start.elapsed().as_secs_f64();
        start = Instant::now();
        wire += sig.entry_frames(4096).map(|f| f.len() as u64).sum::<u64>();
        let mut encoder = Encoder::new(&sig, new.len() as u64).unwrap();
        for piece in new.chunks(PIECE) {
            encoder.feed(piece);
        }
        encoder.finish();
        ops = encoder.take(false);
    }
    times[1] = start.elapsed().as_secs_f64() + checked;
    start = Instant::now();
    let mut patcher = Patcher::new(old.len() as u64, new.len() as u64);
    let mut out = Vec::with_capacity(new.len());
    for op in &ops {
        let mut bytes = Vec::new();
        op.encode(&mut bytes);
        wire += bytes.len() as u64;
        match patcher.apply(op).unwrap() {
            Action::Copy { from, len } => out.extend_from_slice(&old[from as usize..][..len as usize]),
            Action::Write(data) => out.extend_from_slice(data),
        }
    }
    patcher.finish().unwrap();
    times[2] = start.elapsed().as_secs_f64();
    assert!(out == new, "the rebuilt file differs");
    (wire, times)
}

/// Bytes rsync sent and received, and its wall time.
fn rsync(dir: &Path, old: &[u8], new: &Path) -> (u64, f64) {
    let dest = dir.join("dest");
    std::fs::write(&dest, old).unwrap();
    let start = Instant::now();
    let out = Command::new("rsync")
        .args(["--no-whole-file", "--ignore-times", "--stats"])
        .arg(new)
        .arg(&dest)
        .output()
        .expect("rsync is installed (.ci/run and bench/*.py install it)");
    let secs = start.elapsed().as_secs_f64();
    assert!(out.status.success(), "{out:?}");
    let stats = String::from_utf8_lossy(&out.stdout);
    let number = |label: &str| -> u64 {
        let line = stats.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("no {label:?} in {stats}"));
        line[label.len()..].split_whitespace().next().unwrap().replace(',', "").parse().unwrap()
    };
    (number("Total bytes sent:") + number("Total bytes received:"), secs)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds = env_or("FRAMEWIRE_BENCH_ROUNDS", 3).max(1);
    let size = env_or("FRAMEWIRE_BENCH_MIB", 256) << 20;
    let dir = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
    let old = noise(size, 1);
    println!(
        "A file of {} MiB, {rounds} rounds, framewire's engine on one core against rsync --no-whole-file\n",
        size >> 20
    );
    println!("| change | framewire bytes | rsync bytes | bytes ratio | framewire s (median, min–max) | rsync s (median, min–max) | time ratio | framewire index / encode / rebuild s |");
    println!("|---|---|---|---|---|---|---|---|");
    for case in ["scattered 1 %", "insert 1,000 B", "append 4 MiB"] {
        let new = changed(&old, case);
        let new_path = dir.path().join("new");
        std::fs::write(&new_path, &new).unwrap();
        let (mut fw_t, mut rs_t) = (Vec::new(), Vec::new());
        let mut steps: [Vec<f64>; 3] = Default::default();
        let (mut fw_b, mut rs_b) = (0, 0);
        for round in 0..rounds {
            // Rotating order: each tool goes first in turn.
            let mut run_fw = || {
                let (b, t) = framewire(&old, &new);
                fw_b = b;
                // On two machines the index and the encoding run at once
                // (the sender cuts and hashes its file while the index
                // comes; only the lookups wait for it): the critical path.
                fw_t.push(t[0].max(t[1]) + t[2]);
                for (k, s) in t.iter().enumerate() {
                    steps[k].push(*s);
                }
            };
            let mut run_rs = || {
                let (b, t) = rsync(dir.path(), &old, &new_path);
                rs_b = b;
                rs_t.push(t);
            };
            if round % 2 == 0 {
                run_fw();
                run_rs();
            } else {
                run_rs();
                run_fw();
            }
        }
        let range = |v: &[f64]| {
            let (lo, hi) = v.iter().fold((f64::MAX, 0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            format!("{lo:.3}–{hi:.3}")
        };
        let (fm, rm) = (median(fw_t.clone()), median(rs_t.clone()));
        println!(
            "| {case} | {fw_b} | {rs_b} | {:.3}x | {fm:.3} ({}) | {rm:.3} ({}) | {:.2}x | {:.3} / {:.3} / {:.3} |",
            fw_b as f64 / rs_b as f64,
            range(&fw_t),
            range(&rs_t),
            fm / rm,
            median(steps[0].clone()),
            median(steps[1].clone()),
            median(steps[2].clone()),
        );
    }
    println!("\nBytes: framewire's signature frames and ops in their wire form (no frame headers); rsync's Total bytes sent + received. framewire's time: the longer of index and encoding (two machines run them at once), plus the rebuilding, each on one core; rsync's: its wall time, three processes on two cores. Time ratio: framewire / rsync (below 1: faster).");
}
