//! A memory slot is reset for the next message even when the kernel has
//! swapped the last message's pages out (`vendor/wasmtime/PATCHED.md`, part 4).
//!
//! The `faults` handler's `pageout` mode checks that 2,048 pages of freshly
//! grown memory read zero, marks them, and waits; meanwhile the test finds
//! the live instance's memory (the pool slot holding the marked pages), has
//! the kernel swap it out with `madvise(MADV_PAGEOUT)`, checks in
//! `/proc/self/pagemap` that the pages really are in swap, and lets the
//! handler return. Messages that later run in a slot used before must find
//! those pages zero; the test checks that enough of them did. Upstream
//! wasmtime 48's reset scan skipped pages that are not present, so they came
//! back from swap with the earlier message's marks.
//!
//! This needs swap. When none is active and the test runs as root, it turns
//! on a 512 MiB swap file of its own for the run, and turns it off after;
//! otherwise it says it is skipped (and fails instead if
//! `SWITCHYARD_REQUIRE_SWAP_TEST` is set). The plugins must be built first:
//! `make plugins`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assumption in a test is a failed test

mod support;

use std::ffi::c_void;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{config_with_file, read_dead_letters, started_host};

const CONFIG: &str = r#"
    [sources.in]
    type = "file"
    path = "in.jsonl"

    [tenants.t.grants]
    cache_prefixes = ["faults:"]
    db_tables = ["faults"]

    [tenants.t.quotas]
    max_in_flight = 1

    [tenants.t.handlers.faults]
    wasm = "WASM"

    [[routes]]
    source = "in"
    topic = "*"
    tenant = "t"
    handler = "faults"
    max_attempts = 1
    max_message_bytes = 4096
    limits = { memory_mib = 16, timeout_ms = 30000 }
"#;

/// Messages, each checking that its pages read zero, dirtying them, and
/// having them swapped out. The pool hands a slot out again only once its
/// decommit batch is flushed, so it takes some messages before one runs in a
/// slot an earlier one dirtied.
const ROUNDS: usize = 40;

/// The 4 KiB pages each message dirties, each marked with this byte.
const DIRTIED: usize = 2048;
const MARK: u8 = 0xA5;

const PAGE: usize = 4096;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_swapped_out_is_reset_before_the_next_message() {
    let Some(_swap) = Swap::active() else {
        assert!(
            std::env::var_os("SWITCHYARD_REQUIRE_SWAP_TEST").is_none(),
            "no swap is active and none could be turned on"
        );
        eprintln!("SKIPPED: no swap is active and none could be turned on (needs root and swapon)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..ROUNDS)
        .map(|n| format!(r#"{{"topic": "f", "id": "m{n}", "payload": {{"mode": "pageout", "key": "faults:m{n}"}}}}"#))
        .collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let config = config_with_file(dir.path(), CONFIG, "faults", &lines);
    let support::Running { backends, task, .. } = started_host(&config).await;

    let dead = dir.path().join("dead-letter/in.jsonl");
    let reasons = || -> Vec<String> {
        if !dead.exists() {
            return Vec::new();
        }
        read_dead_letters(&dead).iter().filter_map(|l| support::header(l, "switchyard-dead-letter-reason")).collect()
    };
    // The messages may run in any order, one at a time: serve whichever one
    // is waiting.
    let keys: Vec<String> = (0..ROUNDS).map(|n| format!("faults:m{n}:dirty")).collect();
    let mut served = [false; ROUNDS];
    let mut slots = Vec::new();
    let mut fewest_swapped = usize::MAX;
    for _ in 0..ROUNDS {
        let deadline = Instant::now() + Duration::from_secs(30);
        let n = loop {
            let dirty = backends.cache.get_many(&keys).await.unwrap();
            if let Some(n) = (0..ROUNDS).find(|&n| dirty[n].is_some() && !served[n]) {
                break n;
            }
            let failed = reasons();
            assert!(failed.is_empty(), "a message failed: {failed:?}");
            assert!(Instant::now() < deadline, "no message dirtied its pages within 30 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        served[n] = true;
        // The handler is waiting, its instance live: swap its memory out.
        // The kernel may fail to isolate a page now and then: ask again
        // until all are out, and settle for nearly all.
        let slot = live_slot();
        let mut swapped = 0;
        for _ in 0..10 {
            page_out(slot);
            swapped = swapped_pages(slot);
            if swapped >= DIRTIED {
                break;
            }
        }
        assert!(swapped >= DIRTIED - DIRTIED / 64, "only {swapped} pages of {slot:x?} are in swap after MADV_PAGEOUT");
        fewest_swapped = fewest_swapped.min(swapped);
        slots.push(slot);
        backends.cache.set(&format!("faults:m{n}:out"), b"1".to_vec(), None).await.unwrap();
    }

    let stats = tokio::time::timeout(Duration::from_secs(60), task).await.expect("the host finishes").unwrap();
    assert_eq!((stats.handled, stats.dead_lettered), (ROUNDS as u64, 0), "{:?}", reasons());
    // Messages that ran in a slot an earlier message had dirtied and had
    // swapped out: each of them checked that those pages read zero.
    let reused = (1..ROUNDS).filter(|&n| slots[..n].contains(&slots[n])).count();
    eprintln!(
        "{reused} of {ROUNDS} messages ran in a slot an earlier one had swapped out \
         ({DIRTIED} pages marked, at least {fewest_swapped} pages of the slot in swap each time)"
    );
    assert!(reused > 0, "no message ran in a slot an earlier one had used: {slots:x?}");
}

/// The accessible memory of the one live instance: of the writable mappings
/// that end where a reservation of at least 1 GiB of inaccessible memory
/// starts (a linear memory's accessible pages, and the rest of its slot), the
/// one with at least `DIRTIED` present pages marked with `MARK`.
fn live_slot() -> (usize, usize) {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let vmas: Vec<(usize, usize, &str)> = maps
        .lines()
        .map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next().unwrap().split_once('-').unwrap();
            let perms = fields.next().unwrap();
            (usize::from_str_radix(start, 16).unwrap(), usize::from_str_radix(end, 16).unwrap(), perms)
        })
        .collect();
    let live: Vec<(usize, usize)> = vmas
        .windows(2)
        .filter(|w| {
            let ((_, end, perms), (next, next_end, next_perms)) = (w[0], w[1]);
            perms.starts_with("rw") && end == next && next_perms == "---p" && next_end - next >= 1 << 30
        })
        .map(|w| (w[0].0, w[0].1))
        .filter(|&(start, end)| {
            let marked = pagemap(start, end)
                .iter()
                .enumerate()
                .filter(|&(i, entry)| {
                    // SAFETY: a present page of a mapping that stays mapped,
                    // read while the instance that owns it waits in a host call.
                    entry & (1 << 63) != 0 && unsafe { ((start + i * PAGE) as *const u8).read_volatile() } == MARK
                })
                .count();
            marked >= DIRTIED
        })
        .collect();
    assert_eq!(live.len(), 1, "expected one live slot with {DIRTIED} marked pages, found {live:x?}");
    live[0]
}

/// Have the kernel page `start..end` out, to swap.
fn page_out((start, end): (usize, usize)) {
    const MADV_PAGEOUT: i32 = 21;
    // SAFETY: paging out changes no memory, only where the kernel keeps it.
    let rc = unsafe { madvise(start as *mut c_void, end - start, MADV_PAGEOUT) };
    assert_eq!(rc, 0, "MADV_PAGEOUT of {start:#x}..{end:#x}: {}", std::io::Error::last_os_error());
}

/// How many pages of `start..end` are in swap (bit 62 of a pagemap entry).
fn swapped_pages((start, end): (usize, usize)) -> usize {
    pagemap(start, end).iter().filter(|&entry| entry & (1 << 62) != 0).count()
}

/// The `/proc/self/pagemap` entry of each page of `start..end`.
fn pagemap(start: usize, end: usize) -> Vec<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
    pagemap.seek(SeekFrom::Start((start / PAGE * 8) as u64)).unwrap();
    let mut entries = vec![0u8; (end - start) / PAGE * 8];
    pagemap.read_exact(&mut entries).unwrap();
    entries.chunks_exact(8).map(|e| u64::from_ne_bytes(e.try_into().unwrap())).collect()
}

unsafe extern "C" {
    fn madvise(addr: *mut c_void, len: usize, advice: i32) -> i32;
    fn geteuid() -> u32;
}

/// Swap for the test: the swap already active, or a swap file turned on for
/// the test's run and off when dropped.
struct Swap {
    file: Option<PathBuf>,
}

impl Swap {
    fn active() -> Option<Swap> {
        let swaps = std::fs::read_to_string("/proc/swaps").ok()?;
        if swaps.lines().count() > 1 {
            return Some(Swap { file: None });
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { geteuid() } != 0 {
            return None;
        }
        let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("memory-reset-swap-{}", std::process::id()));
        let run = |program: &str, args: &[&str]| {
            Command::new(program).args(args).arg(&file).output().is_ok_and(|out| out.status.success())
        };
        let swap = Swap { file: Some(file.clone()) };
        let on =
            run("fallocate", &["-l", "512M"]) && run("chmod", &["600"]) && run("mkswap", &[]) && run("swapon", &[]);
        on.then_some(swap)
    }
}

impl Drop for Swap {
    fn drop(&mut self) {
        if let Some(file) = &self.file {
            let _ = Command::new("swapoff").arg(file).output();
            let _ = std::fs::remove_file(file);
        }
    }
}
