use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::AtomicU32;
use std::time::Instant;

use super::*;

/// Failures the tests inject into the write path.
#[derive(Default)]
pub(super) struct Faults {
    /// Bytes of the next batch to write before its write fails.
    write_failure: Mutex<Option<usize>>,
    sync_failures: AtomicU32,
    /// Whether cutting the next failed batch back off its file fails.
    cut_failure: AtomicBool,
}

impl Faults {
    fn fail_next_write_after(&self, bytes: usize) {
        *self.write_failure.lock().unwrap() = Some(bytes);
    }

    fn fail_next_syncs(&self, n: u32) {
        self.sync_failures.store(n, Ordering::SeqCst);
    }

    pub(super) fn take_write_failure(&self) -> Option<usize> {
        self.write_failure.lock().unwrap().take()
    }

    fn fail_next_cut(&self) {
        self.cut_failure.store(true, Ordering::SeqCst);
    }

    pub(super) fn take_cut_failure(&self) -> bool {
        self.cut_failure.swap(false, Ordering::SeqCst)
    }

    pub(super) fn take_sync_failure(&self) -> bool {
        self.sync_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// Collects the WARN and ERROR events emitted on the current thread, the
/// latter prefixed `ERROR `.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl Warnings {
    fn capture<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
        let warnings = Warnings::default();
        let out = tracing::subscriber::with_default(warnings.clone(), f);
        let seen = warnings.0.lock().unwrap().clone();
        (out, seen)
    }
}

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl tracing::Subscriber for Warnings {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let level = *event.metadata().level();
        if level == tracing::Level::WARN || level == tracing::Level::ERROR {
            let mut line = String::new();
            if level == tracing::Level::ERROR {
                line.push_str("ERROR ");
            }
            event.record(&mut Fields(&mut line));
            self.0.lock().unwrap().push(line);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn options(segment_size: u64, fsync: FsyncPolicy) -> WalOptions {
    WalOptions {
        segment_size,
        fsync,
        ..WalOptions::default()
    }
}

/// Distinct, self-describing payloads of varying length.
fn payload(i: usize) -> Vec<u8> {
    let mut p = format!("record {i}:").into_bytes();
    p.extend(std::iter::repeat_n((i % 251) as u8, i % 97));
    p
}

fn replay_all(replay: Replay) -> Vec<WalRecord> {
    replay.collect::<Result<_, _>>().unwrap()
}

fn segments_in(dir: &Path) -> Vec<u64> {
    list_segments(dir).unwrap()
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

fn flip(path: &Path, at: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at as usize] ^= 0xff;
    fs::write(path, bytes).unwrap();
}

/// A log of `n` records in one segment; returns the positions.
fn one_segment_log(dir: &Path, n: usize) -> Vec<WalPosition> {
    let (wal, replay) = Wal::open(dir, WalOptions::default()).unwrap();
    assert_eq!(replay.count(), 0);
    let positions: Vec<_> = (0..n).map(|i| wal.append(&payload(i)).unwrap()).collect();
    assert!(positions.iter().all(|p| p.segment == positions[0].segment));
    positions
}

#[test]
fn records_round_trip_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(4096, FsyncPolicy::Never);
    let (wal, _) = Wal::open(dir.path(), opts.clone()).unwrap();
    let positions: Vec<_> = (0..1000)
        .map(|i| wal.append(&payload(i)).unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    let segments = segments_in(dir.path());
    assert!(segments.len() >= 5, "rotated: {segments:?}");
    for seq in &segments {
        assert!(file_len(&segment_path(dir.path(), *seq)) <= 4096);
    }
    assert_eq!(wal.stats().records, 1000);
    drop(wal);

    let (wal, replay) = Wal::open(dir.path(), opts).unwrap();
    let records = replay_all(replay);
    assert_eq!(records.len(), 1000);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.position, positions[i]);
        assert_eq!(r.payload, payload(i));
    }
    let next = wal.append(b"after reopen").unwrap();
    assert!(next > positions[999]);
}

#[test]
fn concurrent_appenders_are_replayed_once_in_order_with_few_fsyncs() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 2000;
    let dir = tempfile::tempdir().unwrap();
    let opts = options(1 << 20, FsyncPolicy::Always);
    let (wal, _) = Wal::open(dir.path(), opts.clone()).unwrap();
    let wal = Arc::new(wal);
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                (0..PER_THREAD)
                    .map(|i| {
                        let mut p = format!("{t}/{i}/").into_bytes();
                        p.resize(64, b'x');
                        wal.append(&p).unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let positions: Vec<Vec<WalPosition>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let stats = wal.stats();
    let total = (THREADS * PER_THREAD) as u64;
    assert_eq!(stats.records, total);
    println!(
        "{total} records, {} batches, {} fsyncs, {} segments",
        stats.batches,
        stats.syncs,
        segments_in(dir.path()).len()
    );
    assert!(
        stats.syncs * 2 < total,
        "group commit shares fsyncs: {} fsyncs for {total} records",
        stats.syncs
    );
    for mine in &positions {
        // A thread's next append starts after its previous one returned.
        assert!(mine.windows(2).all(|w| w[0] < w[1]));
    }
    drop(wal);

    let (_wal, replay) = Wal::open(dir.path(), opts).unwrap();
    let records = replay_all(replay);
    assert_eq!(records.len() as u64, total);
    assert!(records.windows(2).all(|w| w[0].position < w[1].position));
    let mut seen = HashSet::new();
    for r in &records {
        let text = String::from_utf8_lossy(&r.payload);
        let mut parts = text.split('/');
        let t: usize = parts.next().unwrap().parse().unwrap();
        let i: usize = parts.next().unwrap().parse().unwrap();
        assert!(seen.insert((t, i)), "{t}/{i} replayed twice");
        assert_eq!(positions[t][i], r.position);
    }
    assert_eq!(seen.len() as u64, total);
}

#[test]
fn a_tail_torn_at_any_byte_replays_the_complete_records() {
    let source = tempfile::tempdir().unwrap();
    let positions = one_segment_log(source.path(), 5);
    let seq = positions[0].segment;
    let original = fs::read(segment_path(source.path(), seq)).unwrap();
    let last = positions[4].offset as usize;
    assert_eq!(original.len(), last + 8 + payload(4).len());

    for cut in last..original.len() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), seq);
        fs::write(&path, &original[..cut]).unwrap();
        let ((wal, replay), warnings) =
            Warnings::capture(|| Wal::open(dir.path(), WalOptions::default()).unwrap());
        let records = replay_all(replay);
        let payloads: Vec<_> = records.iter().map(|r| r.payload.clone()).collect();
        assert_eq!(
            payloads,
            (0..4).map(payload).collect::<Vec<_>>(),
            "cut at {cut}"
        );
        if cut == last {
            assert!(
                warnings.is_empty(),
                "a clean end is not damage: {warnings:?}"
            );
        } else {
            assert_eq!(warnings.len(), 1, "cut at {cut}: {warnings:?}");
            assert!(
                warnings[0].contains(&format!("offset={last} ")),
                "{warnings:?}"
            );
            assert!(warnings[0].contains(&path.display().to_string()));
        }
        assert_eq!(file_len(&path), last as u64, "truncated at the torn record");

        let next = wal.append(b"written after recovery").unwrap();
        assert_eq!(next, positions[4]);
        drop(wal);
        let ((_wal, replay), warnings) =
            Warnings::capture(|| Wal::open(dir.path(), WalOptions::default()).unwrap());
        let records = replay_all(replay);
        assert_eq!(records.len(), 5);
        assert_eq!(records[4].payload, b"written after recovery");
        assert!(warnings.is_empty(), "{warnings:?}");
    }
}

#[test]
fn a_flipped_byte_in_the_last_record_drops_only_that_record() {
    let source = tempfile::tempdir().unwrap();
    let positions = one_segment_log(source.path(), 6);
    let seq = positions[0].segment;
    let original = fs::read(segment_path(source.path(), seq)).unwrap();
    let last = positions[5].offset;

    for at in last..original.len() as u64 {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), seq);
        fs::write(&path, &original).unwrap();
        flip(&path, at);
        let ((_wal, replay), warnings) =
            Warnings::capture(|| Wal::open(dir.path(), WalOptions::default()).unwrap());
        let records = replay_all(replay);
        assert_eq!(records.len(), 5, "flipped byte {at}");
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.payload, payload(i));
        }
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(file_len(&path), last);
    }
}

#[test]
fn a_corrupt_record_in_an_older_segment_is_kept_aside_and_the_records_after_it_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(1024, FsyncPolicy::Never);
    let (wal, _) = Wal::open(dir.path(), opts.clone()).unwrap();
    let positions: Vec<_> = (0..100).map(|i| wal.append(&payload(i)).unwrap()).collect();
    drop(wal);
    let first = positions[0].segment;
    let in_first: Vec<_> = positions.iter().filter(|p| p.segment == first).collect();
    assert!(in_first.len() >= 3);
    assert!(positions.last().unwrap().segment >= first + 2);
    let path = segment_path(dir.path(), first);
    let before = fs::read(&path).unwrap();
    // A payload byte of the second record of the first segment.
    let damaged = *in_first[1];
    flip(&path, damaged.offset + 8 + 2);

    let ((_wal, replay), warnings) = Warnings::capture(|| {
        let (wal, replay) = Wal::open(dir.path(), opts.clone()).unwrap();
        (wal, replay_all(replay))
    });
    let expected: Vec<_> = positions
        .iter()
        .enumerate()
        .filter(|(_, p)| **p != damaged)
        .map(|(i, p)| (*p, payload(i)))
        .collect();
    let got: Vec<_> = replay
        .into_iter()
        .map(|r| (r.position, r.payload))
        .collect();
    assert_eq!(got, expected, "every record but the damaged one");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with("ERROR "), "{warnings:?}");
    assert!(warnings[0].contains("checksum mismatch"), "{warnings:?}");
    assert!(warnings[0].contains(&format!("start={} ", damaged.offset)));
    // Exactly the damaged record's bytes are kept, as they are on disk.
    let end = in_first[2].offset;
    let kept = dir.path().join(format!(
        "quarantine/{}.{}-{end}.damaged",
        format::segment_file_name(first),
        damaged.offset
    ));
    let mut want = before[damaged.offset as usize..end as usize].to_vec();
    want[8 + 2] ^= 0xff;
    assert_eq!(fs::read(&kept).unwrap(), want);
    assert_eq!(
        fs::read(&path).unwrap().len(),
        before.len(),
        "left as it is"
    );

    // Opened again: the same records, the copy not made twice.
    let ((_wal, again), warnings) = Warnings::capture(|| {
        let (wal, replay) = Wal::open(dir.path(), opts).unwrap();
        (wal, replay_all(replay))
    });
    assert_eq!(again.len(), expected.len());
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        fs::read_dir(dir.path().join("quarantine")).unwrap().count(),
        1
    );
}

/// Garbles `n` bytes from `at`, so they differ from what was there.
fn garble(path: &Path, at: u64, n: usize) {
    let mut bytes = fs::read(path).unwrap();
    for (i, b) in bytes[at as usize..at as usize + n].iter_mut().enumerate() {
        // The high bit of the mask is set: every byte changes.
        *b ^= 0x80 | (i as u8).wrapping_mul(31);
    }
    fs::write(path, bytes).unwrap();
}

/// Damage anywhere before the last records (headers, payloads, across
/// records) loses exactly the records it touches: the last segment keeps
/// every record after it, is not truncated there, and takes appends after
/// its true end.
#[test]
fn damage_in_the_middle_of_the_last_segment_loses_only_the_records_it_touches() {
    let source = tempfile::tempdir().unwrap();
    let positions = one_segment_log(source.path(), 40);
    let seq = positions[0].segment;
    let original = fs::read(segment_path(source.path(), seq)).unwrap();
    let span = |i: usize| {
        let start = positions[i].offset;
        (start, start + 8 + payload(i).len() as u64)
    };
    // From inside the header of record 3 to inside record 30, in steps that
    // land on headers, payloads and boundaries.
    let (from, to) = (span(3).0 + 2, span(30).0);
    for at in (from..to).step_by(7) {
        for n in [1usize, 9, 200] {
            let dir = tempfile::tempdir().unwrap();
            let path = segment_path(dir.path(), seq);
            fs::write(&path, &original).unwrap();
            let n = n.min((original.len() as u64 - at) as usize);
            garble(&path, at, n);
            let touched = |i: usize| {
                let (s, e) = span(i);
                s < at + n as u64 && at < e
            };
            let (wal, replay) = Wal::open(dir.path(), WalOptions::default()).unwrap();
            let got: Vec<_> = replay_all(replay).into_iter().map(|r| r.position).collect();
            let want: Vec<_> = (0..40)
                .filter(|i| !touched(*i))
                .map(|i| positions[i])
                .collect();
            assert_eq!(got, want, "{n} bytes garbled at {at}");
            assert_eq!(file_len(&path), original.len() as u64, "not truncated");
            let next = wal.append(b"after").unwrap();
            assert_eq!(next.offset, original.len() as u64);
            // The kept copy covers the garbled bytes.
            let kept: Vec<_> = fs::read_dir(dir.path().join("quarantine"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(kept.len(), 1, "{kept:?}");
            let range = kept[0]
                .rsplit_once(".log.")
                .and_then(|(_, r)| r.strip_suffix(".damaged"))
                .and_then(|r| r.split_once('-'))
                .map(|(s, e)| (s.parse::<u64>().unwrap(), e.parse::<u64>().unwrap()))
                .unwrap();
            assert!(range.0 <= at && at + n as u64 <= range.1, "{range:?}");
        }
    }
}

/// The reader itself: the damaged range it reports is exactly the records
/// that do not validate, and it resumes at the next one.
#[test]
fn the_reader_reports_the_damaged_range_and_resumes_at_the_next_record() {
    let dir = tempfile::tempdir().unwrap();
    let positions = one_segment_log(dir.path(), 10);
    let path = segment_path(dir.path(), positions[0].segment);
    let len = file_len(&path);
    // Record 4's length field: its header no longer says where record 5 is.
    flip(&path, positions[4].offset + 1);
    // And record 7's payload.
    flip(&path, positions[7].offset + 9);
    let mut reader = RecordReader::open(&path, len, 1 << 20).unwrap();
    let mut buf = Vec::new();
    let mut offsets = Vec::new();
    let mut damage = Vec::new();
    loop {
        let read = reader.next_into(&mut buf);
        damage.extend(reader.take_damage());
        match read {
            Ok(Some(offset)) => offsets.push(offset),
            Ok(None) => break,
            Err(_) => panic!("no tail damage here"),
        }
    }
    let want: Vec<u64> = [0, 1, 2, 3, 5, 6, 8, 9]
        .iter()
        .map(|&i| positions[i].offset)
        .collect();
    assert_eq!(offsets, want);
    let ranges: Vec<_> = damage.iter().map(|d| (d.start, d.end, d.gave_up)).collect();
    assert_eq!(
        ranges,
        vec![
            (positions[4].offset, positions[5].offset, false),
            (positions[7].offset, positions[8].offset, false),
        ]
    );
}

/// Garbage that declares a plausible 1 MiB length at every fourth byte
/// makes each candidate cost a 1 MiB checksum: the scan stops at its
/// budget, keeps the rest of the segment aside, and treats it as a tail.
#[test]
fn the_resync_scan_stops_at_its_checksum_budget_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(64 << 20, FsyncPolicy::Never);
    let positions: Vec<_> = {
        let (wal, _) = Wal::open(dir.path(), opts.clone()).unwrap();
        (0..3).map(|i| wal.append(&payload(i)).unwrap()).collect()
    };
    let path = segment_path(dir.path(), positions[0].segment);
    let good_end = file_len(&path);
    let mut bytes = fs::read(&path).unwrap();
    let pattern = [0u8, 0, 0x10, 0];
    let garbage = format::RESYNC_CHECKSUM_BUDGET / (1 << 20) * 4 + 4096;
    bytes.extend(pattern.iter().cycle().take(garbage as usize));
    // Valid-looking records after the garbage, so room is never what stops it.
    for i in 0..2048 {
        let p = vec![(i % 251) as u8; 1024];
        bytes.extend_from_slice(&encode_record_header(&p));
        bytes.extend_from_slice(&p);
    }
    fs::write(&path, &bytes).unwrap();

    #[cfg(target_os = "linux")]
    let before = vm_peak_kib();
    let started = Instant::now();
    let ((wal, records), warnings) = Warnings::capture(|| {
        let (wal, replay) = Wal::open(dir.path(), opts).unwrap();
        (wal, replay_all(replay))
    });
    println!("gave up after {:?}", started.elapsed());
    #[cfg(target_os = "linux")]
    {
        let grown = vm_peak_kib().saturating_sub(before);
        assert!(grown < 1 << 20, "peak virtual memory grew by {grown} KiB");
    }
    assert_eq!(records.len(), 3);
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("ERROR ") && w.contains("within the scan bound")),
        "{warnings:?}"
    );
    let kept = dir.path().join(format!(
        "quarantine/{}.{good_end}-{}.damaged",
        format::segment_file_name(positions[0].segment),
        bytes.len()
    ));
    assert_eq!(fs::read(&kept).unwrap(), bytes[good_end as usize..]);
    assert_eq!(
        file_len(&path),
        good_end,
        "a copy is kept, so the tail goes"
    );
    assert_eq!(wal.append(b"x").unwrap().offset, good_end);
}

#[test]
fn remove_through_deletes_exactly_the_covered_segments() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(1024, FsyncPolicy::Always);
    let (wal, _) = Wal::open(dir.path(), opts.clone()).unwrap();
    let body = [7u8; 100];
    let positions: Vec<_> = (0..60).map(|_| wal.append(&body).unwrap()).collect();
    // 24-byte header + 9 records of 108 bytes fit in 1024.
    let segs: Vec<u64> = segments_in(dir.path());
    assert_eq!(segs, (1..=7).collect::<Vec<_>>());
    let last_of = |seq: u64| *positions.iter().rfind(|p| p.segment == seq).unwrap();

    assert_eq!(wal.remove_through(last_of(2)).unwrap(), 2);
    assert_eq!(segments_in(dir.path()), (3..=7).collect::<Vec<_>>());

    // A position inside segment 4 covers 3 but not 4.
    let first4 = positions.iter().position(|p| p.segment == 4).unwrap();
    let mid4 = positions[first4 + 3];
    assert_eq!(wal.remove_through(mid4).unwrap(), 1);
    assert_eq!(segments_in(dir.path()), (4..=7).collect::<Vec<_>>());

    // Nothing changes for a position already passed, nor for a position in
    // the active segment.
    assert_eq!(wal.remove_through(last_of(2)).unwrap(), 0);
    assert!(matches!(
        wal.remove_through(WalPosition {
            segment: 99,
            offset: 0
        }),
        Err(WalError::PositionAhead { .. })
    ));
    drop(wal);

    // Replay starts right after the checkpoint, inside segment 4.
    let (wal, replay) = Wal::open(dir.path(), opts.clone()).unwrap();
    let replayed: Vec<_> = replay_all(replay).into_iter().map(|r| r.position).collect();
    let expected: Vec<_> = positions.iter().copied().filter(|p| *p > mid4).collect();
    assert_eq!(replayed, expected);

    // Segments found at open are not scanned, so one is removed only once a
    // later segment's position is passed.
    assert_eq!(wal.remove_through(last_of(5)).unwrap(), 1);
    assert_eq!(segments_in(dir.path()), (5..=7).collect::<Vec<_>>());

    // The active segment is never removed; rotate to let it go.
    let last = *positions.last().unwrap();
    assert_eq!(wal.remove_through(last).unwrap(), 2);
    assert_eq!(segments_in(dir.path()), vec![7]);
    wal.rotate().unwrap();
    assert_eq!(wal.remove_through(last).unwrap(), 1);
    assert_eq!(segments_in(dir.path()), vec![8]);
    wal.rotate().unwrap();
    assert_eq!(
        segments_in(dir.path()),
        vec![8],
        "rotating an empty segment is a no-op"
    );
    drop(wal);

    let (wal, replay) = Wal::open(dir.path(), opts).unwrap();
    assert_eq!(replay.count(), 0);
    assert!(wal.append(b"more").unwrap() > last);
}

/// The files of the default quarantine directory of the log in `dir`.
fn quarantined(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir.join(DEFAULT_QUARANTINE)) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

#[test]
fn a_segment_with_a_foreign_header_is_set_aside_and_the_log_starts() {
    let name = format::segment_file_name(1);
    // Not ours at all; right magic but another version; a header naming
    // another segment; a header whose checksum fails.
    let mut other_version = encode_header(1);
    other_version[8..12].copy_from_slice(&9u32.to_le_bytes());
    let crc = crc32fast::hash(&other_version[..20]);
    other_version[20..24].copy_from_slice(&crc.to_le_bytes());
    let mut garbled = encode_header(1).to_vec();
    garbled[13] ^= 0x40;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"this is not a write-ahead log segment, honestly".to_vec(),
            "not a segment of this log",
        ),
        (other_version.to_vec(), "has format version 9"),
        (encode_header(5).to_vec(), "names segment 5"),
        (garbled, "header checksum mismatch"),
    ];
    for (bytes, why) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 1);
        let mut content = bytes.clone();
        content.extend_from_slice(&[7u8; 100]);
        fs::write(&path, &content).unwrap();
        let ((wal, replay), warnings) =
            Warnings::capture(|| Wal::open(dir.path(), WalOptions::default()).unwrap());
        assert_eq!(replay.count(), 0);
        assert_eq!(warnings.len(), 1, "{why}: {warnings:?}");
        assert!(warnings[0].starts_with("ERROR "), "{warnings:?}");
        assert!(warnings[0].contains(why), "{warnings:?}");
        assert!(warnings[0].contains(&path.display().to_string()));
        assert!(!path.exists(), "{why}: moved");
        assert_eq!(quarantined(dir.path()), vec![name.clone()]);
        assert_eq!(
            fs::read(dir.path().join(DEFAULT_QUARANTINE).join(&name)).unwrap(),
            content,
            "kept as it was"
        );
        // New records go to a new segment, numbered after the one set aside.
        let pos = wal.append(b"x").unwrap();
        assert_eq!(pos.segment, 2);
        drop(wal);
        let (_wal, replay) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        assert_eq!(replay_all(replay).len(), 1);
    }
}

/// A bad header among good segments: the others are replayed in full, and
/// when it was the newest, the one before it is treated as sealed and
/// appends go past it.
#[test]
fn a_bad_header_among_good_segments_sets_only_that_segment_aside() {
    for bad in [2u64, 4] {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(300, FsyncPolicy::Never);
        let positions: Vec<_> = {
            let (wal, _) = Wal::open(dir.path(), opts.clone()).unwrap();
            (0..40).map(|i| wal.append(&payload(i)).unwrap()).collect()
        };
        let last = positions.last().unwrap().segment;
        assert!(last >= 4, "{last}");
        let mut segments = segments_in(dir.path());
        if bad == 4 {
            // Make it the newest one.
            for seq in segments.iter().filter(|s| **s > 4) {
                fs::remove_file(segment_path(dir.path(), *seq)).unwrap();
            }
            segments.retain(|s| *s <= 4);
        }
        flip(&segment_path(dir.path(), bad), 3);
        let ((wal, replay), warnings) = Warnings::capture(|| {
            let (wal, replay) = Wal::open(dir.path(), opts.clone()).unwrap();
            (wal, replay_all(replay))
        });
        let want: Vec<_> = positions
            .iter()
            .filter(|p| p.segment != bad && segments.contains(&p.segment))
            .copied()
            .collect();
        let got: Vec<_> = replay.iter().map(|r| r.position).collect();
        assert_eq!(got, want, "bad segment {bad}");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(
            quarantined(dir.path()),
            vec![format::segment_file_name(bad)]
        );
        let next = wal.append(b"after").unwrap();
        let newest = *segments.last().unwrap();
        if bad == newest {
            assert!(next.segment > bad, "{next}: past the one set aside");
        } else {
            assert_eq!(next.segment, newest, "appends go on in the newest");
        }
    }
}

#[test]
fn an_incomplete_header_of_the_last_segment_is_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    one_segment_log(dir.path(), 3);
    let path = segment_path(dir.path(), 2);
    fs::write(&path, &encode_header(2)[..10]).unwrap();
    let ((wal, replay), warnings) =
        Warnings::capture(|| Wal::open(dir.path(), WalOptions::default()).unwrap());
    assert_eq!(replay_all(replay).len(), 3);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let pos = wal.append(b"x").unwrap();
    assert_eq!(
        pos,
        WalPosition {
            segment: 2,
            offset: HEADER_LEN
        }
    );
}

/// Peak virtual memory of the process, so an allocation sized by a garbage
/// length would show even if the kernel never backed it.
#[cfg(target_os = "linux")]
fn vm_peak_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmPeak:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_declared_length_of_4_gib_is_not_allocated() {
    for (max_record_size, why) in [
        (64 << 20, "exceeds the maximum record size"),
        (u32::MAX, "runs past the end of the segment"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let positions = one_segment_log(dir.path(), 3);
        let path = segment_path(dir.path(), positions[0].segment);
        let mut bytes = fs::read(&path).unwrap();
        let end = bytes.len() as u64;
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&[0xab; 4]);
        bytes.extend_from_slice(&[0xcd; 1000]);
        fs::write(&path, bytes).unwrap();

        #[cfg(target_os = "linux")]
        let before = vm_peak_kib();
        let opts = WalOptions {
            max_record_size,
            ..WalOptions::default()
        };
        let ((_wal, records), warnings) = Warnings::capture(|| {
            let (wal, replay) = Wal::open(dir.path(), opts).unwrap();
            (wal, replay_all(replay))
        });
        #[cfg(target_os = "linux")]
        {
            let grown = vm_peak_kib().saturating_sub(before);
            assert!(grown < 1 << 20, "peak virtual memory grew by {grown} KiB");
        }
        assert_eq!(records.len(), 3);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains(why), "{warnings:?}");
        assert_eq!(file_len(&path), end);
    }
}

#[test]
fn a_failed_write_is_cut_back_and_later_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let ok: Vec<_> = (0..3).map(|i| wal.append(&payload(i)).unwrap()).collect();
    wal.faults().fail_next_write_after(5);
    let err = wal.append(b"lost").unwrap_err();
    assert!(matches!(err, WalError::Io { op: "write", .. }), "{err}");
    let after = wal.append(&payload(3)).unwrap();
    assert_eq!(
        after.offset,
        ok[2].offset + 8 + payload(2).len() as u64,
        "the partial write was cut back"
    );
    drop(wal);
    let ((_wal, replay), warnings) =
        Warnings::capture(|| Wal::open(dir.path(), WalOptions::default()).unwrap());
    let payloads: Vec<_> = replay_all(replay).into_iter().map(|r| r.payload).collect();
    assert_eq!(payloads, (0..4).map(payload).collect::<Vec<_>>());
    assert!(warnings.is_empty(), "{warnings:?}");
}

/// ENOSPC half way through a batch, and the cut back fails too (the disk
/// may refuse even that): the garbage stays at the end of its segment, and
/// the next append goes to a new segment rather than after it.
#[test]
fn a_torn_batch_that_cannot_be_cut_back_is_left_behind_in_its_own_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let ok: Vec<_> = (0..3).map(|i| wal.append(&payload(i)).unwrap()).collect();
    wal.faults().fail_next_write_after(11);
    wal.faults().fail_next_cut();
    let err = wal.append(&payload(100)).unwrap_err();
    assert!(matches!(err, WalError::Io { op: "write", .. }), "{err}");
    let torn = segment_path(dir.path(), ok[0].segment);
    let garbage_end = ok[2].offset + 8 + payload(2).len() as u64 + 11;
    assert_eq!(
        file_len(&torn),
        garbage_end,
        "the torn batch is still there"
    );
    let after: Vec<_> = (3..5).map(|i| wal.append(&payload(i)).unwrap()).collect();
    assert_eq!(after[0].segment, ok[0].segment + 1, "not after the garbage");
    assert_eq!(file_len(&torn), garbage_end, "nothing appended after it");
    drop(wal);
    // Replay reports damage in older segments as it reads them.
    let ((_wal, replay), warnings) = Warnings::capture(|| {
        let (wal, replay) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        (wal, replay_all(replay))
    });
    let payloads: Vec<_> = replay.into_iter().map(|r| r.payload).collect();
    assert_eq!(
        payloads,
        (0..5).map(payload).collect::<Vec<_>>(),
        "every acknowledged record once, the failed one not at all"
    );
    assert_eq!(warnings.len(), 1, "the torn tail is reported: {warnings:?}");
}

/// A failed write that was cut back leaves no trace: replay sees exactly
/// the appends that succeeded, before and after, whatever byte it failed at.
#[test]
fn a_write_failing_at_any_byte_is_never_replayed() {
    let record = payload(7);
    for at in [0, 1, 4, 7, 8, 9, 8 + record.len() - 1] {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        wal.append(&payload(0)).unwrap();
        wal.faults().fail_next_write_after(at);
        assert!(wal.append(&record).is_err(), "fails after {at} bytes");
        wal.append(&payload(1)).unwrap();
        drop(wal);
        let ((_wal, replay), warnings) = Warnings::capture(|| {
            let (wal, replay) = Wal::open(dir.path(), WalOptions::default()).unwrap();
            (wal, replay_all(replay))
        });
        let payloads: Vec<_> = replay.into_iter().map(|r| r.payload).collect();
        assert_eq!(payloads, vec![payload(0), payload(1)], "failed after {at}");
        assert!(warnings.is_empty(), "failed after {at}: {warnings:?}");
    }
}

#[test]
fn a_failed_fsync_fails_the_append_and_moves_to_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let first = wal.append(b"one").unwrap();
    wal.faults().fail_next_syncs(1);
    let err = wal.append(b"not acknowledged").unwrap_err();
    assert!(matches!(err, WalError::Io { op: "fsync", .. }), "{err}");
    let next = wal.append(b"two").unwrap();
    assert_eq!(next.segment, first.segment + 1);
    drop(wal);
    let (_wal, replay) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let payloads: Vec<_> = replay_all(replay).into_iter().map(|r| r.payload).collect();
    assert_eq!(payloads, vec![b"one".to_vec(), b"two".to_vec()]);
}

#[test]
fn interval_policy_fsyncs_in_the_background_and_never_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(4096, FsyncPolicy::Interval(Duration::from_millis(10)));
    let (wal, _) = Wal::open(dir.path(), opts.clone()).unwrap();
    for i in 0..10 {
        wal.append(&payload(i)).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while wal.stats().syncs == 0 {
        assert!(Instant::now() < deadline, "the syncer never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(wal);
    let (_wal, replay) = Wal::open(dir.path(), opts).unwrap();
    assert_eq!(replay.count(), 10);

    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), options(1024, FsyncPolicy::Never)).unwrap();
    for i in 0..100 {
        wal.append(&payload(i)).unwrap();
    }
    assert!(segments_in(dir.path()).len() > 1);
    assert_eq!(wal.stats().syncs, 0);
}

#[test]
fn empty_and_oversized_records_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        max_record_size: 1000,
        ..WalOptions::default()
    };
    let (wal, _) = Wal::open(dir.path(), opts.clone()).unwrap();
    assert!(matches!(wal.append(b""), Err(WalError::EmptyRecord)));
    assert!(matches!(
        wal.append(&[1; 1001]),
        Err(WalError::RecordTooLarge {
            len: 1001,
            max: 1000
        })
    ));
    wal.append(&[1; 1000]).unwrap();
    drop(wal);
    let (_wal, replay) = Wal::open(dir.path(), opts).unwrap();
    assert_eq!(replay_all(replay)[0].payload.len(), 1000);
}

#[test]
fn a_checkpoint_past_the_surviving_data_starts_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let positions = one_segment_log(dir.path(), 3);
    {
        let (wal, replay) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        assert_eq!(replay.count(), 3);
        wal.remove_through(positions[2]).unwrap();
    }
    // The checkpointed records vanished (fsync off and a power loss).
    let path = segment_path(dir.path(), positions[0].segment);
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(positions[1].offset)
        .unwrap();
    let (wal, replay) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(replay.count(), 0);
    let new = wal.append(b"new").unwrap();
    assert!(
        new > positions[2],
        "{new} must not be hidden by the checkpoint"
    );
    drop(wal);
    let (_wal, replay) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let payloads: Vec<_> = replay_all(replay).into_iter().map(|r| r.payload).collect();
    assert_eq!(payloads, vec![b"new".to_vec()]);
}

/// `cargo test --release -- --ignored --nocapture bench_group_commit`;
/// `WAL_BENCH_DIR` picks the disk (default: the system temp dir).
#[test]
#[ignore]
fn bench_group_commit() {
    const PAYLOAD: usize = 100_000;
    const SECONDS: f64 = 5.0;
    let base = std::env::var_os("WAL_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    println!("data dir under {}", base.display());

    // What one writer gets with one fsync per record, for comparison.
    {
        let dir = tempfile::tempdir_in(&base).unwrap();
        let mut file = File::create(dir.path().join("raw")).unwrap();
        let body = vec![1u8; PAYLOAD];
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed().as_secs_f64() < SECONDS {
            file.write_all(&body).unwrap();
            file.sync_data().unwrap();
            n += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "raw write+fdatasync, 1 writer: {:>7.0} appends/s {:>7.1} MB/s",
            n as f64 / secs,
            n as f64 * PAYLOAD as f64 / secs / 1e6
        );
    }

    for threads in [1usize, 4, 16] {
        let dir = tempfile::tempdir_in(&base).unwrap();
        let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        let wal = Arc::new(wal);
        let start = Instant::now();
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let wal = Arc::clone(&wal);
                std::thread::spawn(move || {
                    let body = vec![t as u8 + 1; PAYLOAD];
                    let mut latencies = Vec::new();
                    while start.elapsed().as_secs_f64() < SECONDS {
                        let t0 = Instant::now();
                        wal.append(&body).unwrap();
                        latencies.push(t0.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        let mut latencies: Vec<Duration> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        let secs = start.elapsed().as_secs_f64();
        latencies.sort_unstable();
        let stats = wal.stats();
        let pct = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
        println!(
            "{threads:>2} appenders: {:>7.0} appends/s {:>7.1} MB/s, {:>5.0} fsyncs/s, {:>5.1} records/fsync, latency p50 {:>6.2?} p99 {:>6.2?}",
            stats.records as f64 / secs,
            stats.bytes as f64 / secs / 1e6,
            stats.syncs as f64 / secs,
            stats.records as f64 / stats.syncs.max(1) as f64,
            pct(0.5),
            pct(0.99),
        );
    }
}

#[test]
fn the_log_can_be_shared_across_threads() {
    fn shared<T: Send + Sync>() {}
    fn sent<T: Send>() {}
    shared::<Wal>();
    sent::<Replay>();
    shared::<WalError>();
}

#[test]
fn submitted_records_are_written_by_the_writer_thread_in_shared_fsyncs() {
    const TASKS: usize = 64;
    const PER_TASK: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let opts = options(1 << 20, FsyncPolicy::Always);
    let (wal, _) = Wal::open(dir.path(), opts.clone()).unwrap();
    let wal = Arc::new(wal);
    // One runtime thread: without the writer thread, every record would
    // wait for a write and fsync of its own.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let positions: Vec<Vec<WalPosition>> = runtime.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let wal = Arc::clone(&wal);
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    for i in 0..PER_TASK {
                        let submitted = wal.submit(format!("{t}/{i}").as_bytes()).unwrap();
                        mine.push(submitted.written().await.unwrap());
                    }
                    mine
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.unwrap());
        }
        all
    });
    let total = (TASKS * PER_TASK) as u64;
    let stats = wal.stats();
    assert_eq!(stats.records, total);
    assert!(
        stats.syncs * 4 < total,
        "writes share fsyncs: {} fsyncs for {total} records",
        stats.syncs
    );
    drop(wal);

    let (_wal, replay) = Wal::open(dir.path(), opts).unwrap();
    let records = replay_all(replay);
    assert_eq!(records.len() as u64, total);
    for r in &records {
        let text = String::from_utf8_lossy(&r.payload);
        let (t, i) = text.split_once('/').unwrap();
        let (t, i): (usize, usize) = (t.parse().unwrap(), i.parse().unwrap());
        assert_eq!(positions[t][i], r.position, "{text}");
    }
}

#[test]
fn records_submitted_before_the_log_is_dropped_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(1 << 20, FsyncPolicy::Always);
    let (wal, _) = Wal::open(dir.path(), opts.clone()).unwrap();
    let submitted: Vec<Submitted> = (0..100).map(|i| wal.submit(&payload(i)).unwrap()).collect();
    drop(wal);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let positions: Vec<WalPosition> = runtime.block_on(async {
        let mut out = Vec::new();
        for s in submitted {
            out.push(s.written().await.unwrap());
        }
        out
    });
    let (_wal, replay) = Wal::open(dir.path(), opts).unwrap();
    let records = replay_all(replay);
    assert_eq!(records.len(), 100);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.payload, payload(i));
        assert_eq!(r.position, positions[i]);
    }
}
