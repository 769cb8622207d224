//! A write-ahead log segment as `serve` may find it after a crash or on a
//! damaged disk: the input becomes the only segment of a log directory, which
//! is opened, replayed, appended to and opened again. Whatever the bytes
//! (a garbled header, damage in the middle that the reader must scan past,
//! lengths that claim gigabytes), the log opens, replays only records whose
//! checksum holds, within the maximum record size, and takes appends that the
//! next open replays.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;
use llmtrace::wal::segment::{FsyncPolicy, Wal, WalOptions};

const MAX_RECORD: u32 = 64 << 10;

/// A fresh directory per input, in memory when the system has /dev/shm.
fn scratch() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let base = Path::new("/dev/shm");
    let base = if base.is_dir() {
        base.to_owned()
    } else {
        std::env::temp_dir()
    };
    let n = N.fetch_add(1, Ordering::Relaxed);
    base.join(format!("llmtrace-fuzz-wal-{}-{n}", std::process::id()))
}

fn options(dir: &Path) -> WalOptions {
    WalOptions {
        segment_size: 1 << 20,
        max_record_size: MAX_RECORD,
        fsync: FsyncPolicy::Never,
        quarantine_dir: Some(dir.join("quarantine")),
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("wal-00000000000000000001.log"), data).unwrap();
    {
        let (wal, replay) = Wal::open(&dir, options(&dir)).expect("a log opens whatever it holds");
        for record in replay {
            let record = record.expect("no I/O error on a scratch dir");
            assert!(!record.payload.is_empty());
            assert!(record.payload.len() <= MAX_RECORD as usize);
        }
        wal.append(b"appended after recovery").unwrap();
    }
    let (_wal, replay) = Wal::open(&dir, options(&dir)).expect("and opens again");
    let last = replay
        .map(|r| r.unwrap())
        .last()
        .expect("the append is replayed");
    assert_eq!(last.payload, b"appended after recovery");
    let _ = std::fs::remove_dir_all(&dir);
});
