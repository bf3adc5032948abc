//! File audit log behaviour beyond the conformance suite: recovery of an
//! incomplete last line, the verifier's line numbers, several writers on one
//! file, permissions.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use keywheel_core::{AuditEvent, AuditKind, AuditSink, ChainViolationKind, Error, Outcome, Timestamp};
use keywheel_file::{FileAuditSink, RECOVERY_ACTOR, verify_log};

fn event(n: u32) -> AuditEvent {
    AuditEvent {
        at: Timestamp::from_millis(1_750_000_000_000 + i64::from(n)),
        actor: format!("ops-{n}"),
        keyring: None,
        kind: AuditKind::PolicyChanged { summary: format!("change {n}: \"quoted\" ✓") },
        reason: None,
        correlation_id: format!("c{n}"),
        outcome: Outcome::Success,
    }
}

async fn log_with(path: &Path, n: u32) -> FileAuditSink {
    let sink = FileAuditSink::open(path).expect("open");
    for i in 0..n {
        sink.record(&event(i)).await.expect("record");
    }
    sink
}

fn append_raw(path: &Path, bytes: &[u8]) {
    OpenOptions::new().append(true).open(path).expect("open").write_all(bytes).expect("append");
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path).expect("read").lines().map(str::to_owned).collect()
}

fn rewrite(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    fs::write(path, text).expect("write");
}

/// A tiny deterministic xorshift64* generator.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

#[tokio::test]
async fn an_incomplete_last_line_is_detected_reported_and_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    drop(log_with(&path, 5).await);
    let intact = fs::read(&path).expect("read");
    // The first 40 bytes of what would have been the next line.
    let partial = lines(&path)[2].as_bytes()[..40].to_vec();
    append_raw(&path, &partial);

    let report = verify_log(&path).expect("verify");
    assert!(!report.is_intact() && report.is_intact_but_torn(), "{report}");
    let torn = report.torn_last_line.expect("torn line");
    assert_eq!((torn.line, torn.offset, torn.bytes), (6, intact.len() as u64, 40));
    assert_eq!((report.lines, report.entries), (5, 5));
    assert!(report.to_string().contains("line 6: incomplete last line (40 bytes)"), "{report}");

    let sink = FileAuditSink::open(&path).expect("reopen repairs");
    let recoveries = sink.recoveries();
    assert_eq!(recoveries.len(), 1);
    assert_eq!(
        (recoveries[0].offset, recoveries[0].discarded, recoveries[0].after_seq),
        (intact.len() as u64, 40, Some(4))
    );
    let entries = sink.entries().await.expect("entries").expect("chained");
    assert_eq!(entries.len(), 6);
    let last = &entries[5];
    assert_eq!(last.event.actor, RECOVERY_ACTOR);
    match &last.event.kind {
        AuditKind::LogRecovered { detail } => {
            assert!(detail.contains("40 bytes") && detail.contains("after entry seq 4"), "{detail}");
            assert!(detail.contains(&path.display().to_string()), "{detail}");
        }
        other => panic!("expected LogRecovered, got {other:?}"),
    }
    assert!(fs::read(&path).expect("read").starts_with(&intact), "intact entries kept byte for byte");
    sink.record(&event(9)).await.expect("record after recovery");
    let report = verify_log(&path).expect("verify");
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.entries, 7);
}

#[tokio::test]
async fn a_cut_anywhere_leaves_a_log_that_verifies_after_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng(0x00C0_FFEE);
    for trial in 0..25 {
        let path = dir.path().join(format!("audit-{trial}.jsonl"));
        drop(log_with(&path, 4).await);
        let bytes = fs::read(&path).expect("read");
        let cut = rng.below(bytes.len() as u64 + 1) as usize;
        fs::write(&path, &bytes[..cut]).expect("cut");
        let complete = bytes[..cut].iter().filter(|&&b| b == b'\n').count();
        let report = verify_log(&path).expect("verify");
        assert!(report.is_intact_but_torn(), "cut at {cut}: {report}");
        assert_eq!(report.torn_last_line.is_some(), cut > 0 && bytes[cut - 1] != b'\n', "cut at {cut}");
        let sink = FileAuditSink::open(&path).expect("reopen");
        assert_eq!(sink.recoveries().len(), usize::from(report.torn_last_line.is_some()));
        sink.record(&event(100)).await.expect("record");
        let report = verify_log(&path).expect("verify");
        assert!(report.is_intact(), "cut at {cut}: {report}");
        assert_eq!(report.entries as usize, complete + sink.recoveries().len() + 1);
    }
}

#[tokio::test]
async fn the_verifier_names_the_line_of_every_kind_of_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    drop(log_with(&path, 6).await);
    let good = lines(&path);

    let mut edited = good.clone();
    edited[2] = edited[2].replace("ops-2", "mallory");
    rewrite(&path, &edited);
    let report = verify_log(&path).expect("verify");
    let b = report.chain_break.clone().expect("break");
    assert_eq!((b.line, b.violation.kind), (3, ChainViolationKind::Altered), "{report}");
    assert!(report.to_string().contains("line 3: chain broken at seq 2: entry altered"), "{report}");

    let mut deleted = good.clone();
    deleted.remove(1);
    rewrite(&path, &deleted);
    let b = verify_log(&path).expect("verify").chain_break.expect("break");
    assert_eq!((b.line, b.violation.kind), (2, ChainViolationKind::Missing { expected_seq: 1 }));

    let mut reordered = good.clone();
    reordered.swap(3, 4);
    rewrite(&path, &reordered);
    let b = verify_log(&path).expect("verify").chain_break.expect("break");
    assert_eq!((b.line, b.violation.kind), (4, ChainViolationKind::Reordered { expected_seq: 3 }));

    let mut garbage = good.clone();
    garbage[3] = "{\"format\":1,\"seq\":3,\"prev\"".into();
    garbage[4] = good[4].replacen("\"format\":1", "\"format\":2", 1);
    rewrite(&path, &garbage);
    let report = verify_log(&path).expect("verify");
    let bad: Vec<u64> = report.bad_lines.iter().map(|b| b.line).collect();
    assert_eq!(bad, vec![4, 5], "{report}");
    assert!(report.bad_lines[1].problem.contains("unknown format version 2"), "{report}");
    assert_eq!(report.chain_break.as_ref().map(|b| b.line), Some(6), "the entry after the gap: {report}");
    assert!(report.to_string().contains("line 4: not an entry"), "{report}");
    let sink = FileAuditSink::open(&path).expect("the last line is intact, so the log can continue");
    let message = sink.entries().await.expect_err("entries names the bad line").to_string();
    assert!(message.contains(&format!("{}: line 4:", path.display())), "{message}");
}

#[tokio::test]
async fn a_damaged_last_line_refuses_open_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    drop(log_with(&path, 3).await);
    append_raw(&path, b"{\"format\":1,\"oops\":true}\n");
    let before = fs::read(&path).expect("read");
    let err = FileAuditSink::open(&path).expect_err("cannot continue the chain");
    let message = match err {
        Error::Backend { backend: "file audit sink", message, .. } => message,
        other => panic!("{other:?}"),
    };
    assert!(message.starts_with(&path.display().to_string()) && message.contains("last complete line"), "{message}");
    assert_eq!(fs::read(&path).expect("read"), before);
}

#[tokio::test]
async fn several_writers_on_one_file_form_one_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    // Separate opens, as separate processes would have: each its own OS lock.
    let sinks: Vec<Arc<FileAuditSink>> = (0..3).map(|_| Arc::new(FileAuditSink::open(&path).expect("open"))).collect();
    let mut threads = Vec::new();
    for (w, sink) in sinks.iter().enumerate() {
        let sink = Arc::clone(sink);
        threads.push(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            for i in 0..15 {
                rt.block_on(sink.record(&event(u32::try_from(w * 100 + i).expect("small")))).expect("record");
            }
        }));
    }
    for t in threads {
        t.join().expect("writer");
    }
    let report = verify_log(&path).expect("verify");
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.entries, 45);

    // A writer that died in the middle of an append: the next append repairs it.
    append_raw(&path, b"{\"format\":1,\"seq\":45,\"pre");
    sinks[0].record(&event(999)).await.expect("record");
    assert_eq!(sinks[0].recoveries().len(), 1);
    let report = verify_log(&path).expect("verify");
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.entries, 47);
}

#[tokio::test]
async fn a_log_others_can_write_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    drop(log_with(&path, 1).await);
    assert_eq!(fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o620)).expect("chmod");
    let message = FileAuditSink::open(&path).expect_err("group-writable").to_string();
    assert!(message.contains(&format!("chmod 600 {}", path.display())), "{message}");
    assert!(message.contains("allow_insecure_permissions"), "{message}");
    FileAuditSink::options().allow_insecure_permissions(true).open(&path).expect("explicit opt-out");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
    FileAuditSink::open(&path).expect("readable by others is allowed: no key material in the log");
}

#[tokio::test]
async fn a_rotated_log_is_followed_to_the_new_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let old = log_with(&path, 3).await;
    // logrotate moves the log away; the next process starts a new one.
    let rotated = dir.path().join("audit.jsonl.1");
    fs::rename(&path, &rotated).expect("rotate");
    let rotated_bytes = fs::read(&rotated).expect("read");
    let new = log_with(&path, 2).await;
    old.record(&event(10)).await.expect("the old sink follows the path");
    new.record(&event(11)).await.expect("record");
    assert_eq!(fs::read(&rotated).expect("read"), rotated_bytes, "the rotated file is left alone");
    let report = verify_log(&path).expect("verify");
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.entries, 4, "one chain in the new file");
}
