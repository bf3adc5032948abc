//! File audit log behaviour beyond the conformance suite: recovery of an
//! incomplete last line, the verifier's line numbers, several writers on one
//! file, permissions, and the keyed chain (re-hashed, truncated, wiped and
//! injected logs).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use keywheel_core::{
    AuditEvent, AuditKind, AuditSink, ChainHead, ChainVerifier, ChainViolationKind, Error, IntegrityKey, Outcome,
    Timestamp, entry_hash,
};
use keywheel_file::{FileAuditSink, LogReport, RECOVERY_ACTOR, verify_log};

fn key() -> IntegrityKey {
    IntegrityKey::derive(&[3; 32], b"file-audit-tests")
}

/// Verify with the key (MACs checked).
fn verify_keyed(path: &Path) -> LogReport {
    let keys = [key()];
    verify_log(path, &ChainVerifier::new().keys(&keys)).expect("verify")
}

/// Verify the structure only.
fn verify_plain(path: &Path) -> LogReport {
    verify_log(path, &ChainVerifier::new()).expect("verify")
}

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
        sink.record(&event(i), &key()).await.expect("record");
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

    let report = verify_keyed(&path);
    assert!(!report.is_intact() && report.is_intact_but_torn(), "{report}");
    let torn = report.torn_last_line.expect("torn line");
    assert_eq!((torn.line, torn.offset, torn.bytes), (6, intact.len() as u64, 40));
    assert_eq!((report.lines, report.entries), (5, 5));
    assert!(report.to_string().contains("line 6: incomplete last line (40 bytes)"), "{report}");

    // Opening reads only; the first append (which has the key) repairs and records it.
    let sink = FileAuditSink::open(&path).expect("reopen");
    assert!(sink.recoveries().is_empty());
    assert_eq!(sink.entries().await.expect("entries").expect("chained").len(), 5);
    sink.record(&event(9), &key()).await.expect("record after recovery");
    let recoveries = sink.recoveries();
    assert_eq!(recoveries.len(), 1);
    assert_eq!(
        (recoveries[0].offset, recoveries[0].discarded, recoveries[0].after_seq),
        (intact.len() as u64, 40, Some(4))
    );
    let entries = sink.entries().await.expect("entries").expect("chained");
    assert_eq!(entries.len(), 7);
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
    let report = verify_keyed(&path);
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
        let report = verify_plain(&path);
        assert!(report.is_intact_but_torn(), "cut at {cut}: {report}");
        assert_eq!(report.torn_last_line.is_some(), cut > 0 && bytes[cut - 1] != b'\n', "cut at {cut}");
        let sink = FileAuditSink::open(&path).expect("reopen");
        sink.record(&event(100), &key()).await.expect("record");
        assert_eq!(sink.recoveries().len(), usize::from(report.torn_last_line.is_some()));
        let report = verify_keyed(&path);
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
    let report = verify_plain(&path);
    let b = report.chain_break.clone().expect("break");
    assert_eq!((b.line, b.violation.kind), (3, ChainViolationKind::Altered), "{report}");
    assert!(report.to_string().contains("line 3: chain broken at seq 2: entry altered"), "{report}");

    let mut deleted = good.clone();
    deleted.remove(1);
    rewrite(&path, &deleted);
    let b = verify_plain(&path).chain_break.expect("break");
    assert_eq!((b.line, b.violation.kind), (2, ChainViolationKind::Missing { expected_seq: 1 }));

    let mut reordered = good.clone();
    reordered.swap(3, 4);
    rewrite(&path, &reordered);
    let b = verify_plain(&path).chain_break.expect("break");
    assert_eq!((b.line, b.violation.kind), (4, ChainViolationKind::Reordered { expected_seq: 3 }));

    let mut garbage = good.clone();
    garbage[3] = "{\"format\":1,\"seq\":3,\"prev\"".into();
    garbage[4] = good[4].replacen("\"format\":1", "\"format\":2", 1);
    rewrite(&path, &garbage);
    let report = verify_plain(&path);
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
                rt.block_on(sink.record(&event(u32::try_from(w * 100 + i).expect("small")), &key())).expect("record");
            }
        }));
    }
    for t in threads {
        t.join().expect("writer");
    }
    let report = verify_keyed(&path);
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.entries, 45);

    // A writer that died in the middle of an append: the next append repairs it.
    append_raw(&path, b"{\"format\":1,\"seq\":45,\"pre");
    sinks[0].record(&event(999), &key()).await.expect("record");
    assert_eq!(sinks[0].recoveries().len(), 1);
    let report = verify_keyed(&path);
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.entries, 47);
}

#[tokio::test]
async fn a_log_others_can_read_or_write_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    drop(log_with(&path, 1).await);
    assert_eq!(fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o620)).expect("chmod");
    let message = FileAuditSink::open(&path).expect_err("group-writable").to_string();
    assert!(message.contains(&format!("chmod 600 {}", path.display())), "{message}");
    assert!(message.contains("allow_insecure_permissions"), "{message}");
    FileAuditSink::options().allow_insecure_permissions(true).open(&path).expect("explicit opt-out");
    for readable in [0o640, 0o644, 0o604] {
        fs::set_permissions(&path, fs::Permissions::from_mode(readable)).expect("chmod");
        let message = FileAuditSink::open(&path).expect_err("readable by others").to_string();
        assert!(message.contains(&format!("permissions {readable:04o}")), "{message}");
        assert!(message.contains(&format!("chmod 600 {}", path.display())), "{message}");
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
    FileAuditSink::open(&path).expect("0600 is accepted");
}

#[tokio::test]
async fn a_log_moved_away_under_a_live_sink_is_an_error_not_a_new_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let old = log_with(&path, 3).await;
    // logrotate moves the log away; the next process starts a new one.
    let rotated = dir.path().join("audit.jsonl.1");
    fs::rename(&path, &rotated).expect("rotate");
    let rotated_bytes = fs::read(&rotated).expect("read");
    let new = log_with(&path, 2).await;
    let before = fs::read(&path).expect("read");
    let err = old.record(&event(10), &key()).await.expect_err("the old sink has seen seq 2");
    assert!(matches!(&err, Error::Audit(m) if m.contains("seen entry seq 2")), "{err}");
    assert_eq!(fs::read(&path).expect("read"), before, "nothing appended");
    new.record(&event(11), &key()).await.expect("record");
    assert_eq!(fs::read(&rotated).expect("read"), rotated_bytes, "the rotated file is left alone");
    let report = verify_keyed(&path);
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.entries, 3, "one chain in the new file");
}

#[tokio::test]
async fn a_log_rehashed_without_the_key_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let sink = log_with(&path, 5).await;
    let mut entries = sink.entries().await.expect("entries").expect("chained");
    // The attacker edits entry 2 and recomputes every hash from there: no key
    // needed. The lines are edited in place, so they stay canonical.
    let mut forged = lines(&path);
    forged[2] = forged[2].replacen("\"actor\":\"ops-2\"", "\"actor\":\"mallory\"", 1);
    entries[2].event.actor = "mallory".into();
    for i in 2..entries.len() {
        let (old_prev, old_hash) = (entries[i].prev_hash.clone(), entries[i].hash.clone());
        entries[i].prev_hash = entries[i - 1].hash.clone();
        let e = &entries[i];
        entries[i].hash = entry_hash(e.seq, &e.prev_hash, &e.event).expect("hash");
        forged[i] = forged[i]
            .replacen(
                &format!("\"prev_hash\":\"{old_prev}\""),
                &format!("\"prev_hash\":\"{}\"", entries[i].prev_hash),
                1,
            )
            .replacen(&format!("\"hash\":\"{old_hash}\""), &format!("\"hash\":\"{}\"", entries[i].hash), 1);
    }
    rewrite(&path, &forged);

    let plain = verify_plain(&path);
    assert!(plain.is_intact() && !plain.macs_checked, "the structure is sound again: {plain}");
    assert!(plain.to_string().contains("MACs NOT checked"), "{plain}");
    let report = verify_keyed(&path);
    let b = report.chain_break.clone().expect("the MAC check catches it");
    assert_eq!((b.line, b.violation.seq, b.violation.kind), (3, 2, ChainViolationKind::BadMac), "{report}");
    assert!(report.to_string().contains("line 3: chain broken at seq 2: entry not authenticated"), "{report}");
    // A sink that has seen the real head refuses to continue the forged log.
    let err = sink.record(&event(9), &key()).await.expect_err("forged");
    assert!(matches!(&err, Error::Audit(m) if m.contains("has another entry at seq 4")), "{err}");
    // A fresh process does not know the head, but will not extend a forged end under its key.
    let fresh = FileAuditSink::open(&path).expect("open");
    let err = fresh.record(&event(9), &key()).await.expect_err("forged end");
    assert!(matches!(&err, Error::Audit(m) if m.contains("does not carry a valid MAC")), "{err}");
}

#[tokio::test]
async fn a_wiped_or_truncated_log_under_a_live_sink_is_an_error_not_seq_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let sink = log_with(&path, 4).await;
    let head = sink.seen_head().expect("head").expect("non-empty");
    assert_eq!(head.seq, 3);
    let good = lines(&path);

    fs::write(&path, "").expect("wipe");
    let err = sink.record(&event(10), &key()).await.expect_err("wiped");
    assert!(matches!(&err, Error::Audit(m) if m.contains("is empty") && m.contains("seen entry seq 3")), "{err}");
    assert_eq!(fs::read(&path).expect("read"), b"", "no new chain started at seq 0");
    let report = sink.verify(&ChainVerifier::new()).expect("verify");
    let b = report.chain_break.expect("truncated");
    assert_eq!((b.line, b.violation.kind), (1, ChainViolationKind::Truncated { expected_seq: 3 }));

    rewrite(&path, &good[..2]);
    let err = sink.record(&event(11), &key()).await.expect_err("truncated");
    assert!(matches!(&err, Error::Audit(m) if m.contains("ends at entry seq 1")), "{err}");
    assert_eq!(lines(&path).len(), 2);
    let report = sink.verify(&ChainVerifier::new()).expect("verify");
    assert!(
        report.to_string().contains("line 3: chain broken at seq 3: log ends before the expected head"),
        "{report}"
    );

    // Restored: the sink continues.
    rewrite(&path, &good);
    sink.record(&event(12), &key()).await.expect("restored");
    assert!(verify_keyed(&path).is_intact());

    // A new process given the anchored head refuses a cut log on open.
    let anchored: ChainHead = head.to_string().parse().expect("parse");
    rewrite(&path, &good[..3]);
    let err = FileAuditSink::options().expect_head(anchored.clone()).open(&path).expect_err("cut");
    assert!(matches!(&err, Error::Audit(m) if m.contains("does not contain the expected head")), "{err}");
    rewrite(&path, &good);
    let reopened = FileAuditSink::options().expect_head(anchored.clone()).open(&path).expect("intact");
    assert_eq!(reopened.seen_head().expect("head"), Some(anchored));
}

#[tokio::test]
async fn injected_unknown_fields_fail_verification_naming_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    drop(log_with(&path, 4).await);
    let good = lines(&path);
    for (what, line) in [
        ("entry level", good[1].replacen("\"format\":1,", "\"format\":1,\"injected\":true,", 1)),
        ("event level", good[1].replacen("\"event\":{", "\"event\":{\"injected\":true,", 1)),
        ("kind level", good[1].replacen("\"type\":\"policy_changed\"", "\"type\":\"policy_changed\",\"x\":1", 1)),
    ] {
        assert_ne!(line, good[1], "{what}: the injection applies");
        let mut injected = good.clone();
        injected[1] = line;
        rewrite(&path, &injected);
        let report = verify_keyed(&path);
        assert!(!report.is_intact(), "{what}: {report}");
        assert_eq!(report.bad_lines.len(), 1, "{what}: {report}");
        assert_eq!(report.bad_lines[0].line, 2, "{what}: {report}");
        assert!(report.bad_lines[0].problem.contains("unknown field"), "{what}: {report}");
    }
    // Same fields, another order or spacing: parses to the same entry, but is not what keywheel wrote.
    let mut reordered = good.clone();
    let value: serde_json::Value = serde_json::from_str(&good[2]).expect("json");
    reordered[2] = serde_json::to_string_pretty(&value).expect("json").replace('\n', "");
    rewrite(&path, &reordered);
    let report = verify_keyed(&path);
    assert_eq!(report.bad_lines.iter().map(|b| b.line).collect::<Vec<_>>(), vec![3], "{report}");
    assert!(report.bad_lines[0].problem.contains("not in canonical form"), "{report}");
}
