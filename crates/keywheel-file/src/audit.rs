//! [`FileAuditSink`]: an append-only, keyed hash-chained JSON Lines audit log,
//! and [`verify_log`], its verifier with line numbers.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use keywheel_core::{
    AUDIT_MAC_LABEL, AuditChain, AuditEntry, AuditEvent, AuditKind, AuditSink, ChainHead, ChainVerifier,
    ChainViolation, Clock, Error, IntegrityKey, Outcome, Result, SystemClock, async_trait, correlation_id,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fsio::{self, Backend, FILE_MODE, FORMAT, LockGuard, ProcessLock, sync_dir};

const BACKEND: Backend = Backend("file audit sink");

/// The actor of the [`AuditKind::LogRecovered`] events the sink records itself.
pub const RECOVERY_ACTOR: &str = "keywheel-file";

/// Bytes read per step when looking for the last line from the end of the log.
const TAIL_CHUNK: u64 = 64 * 1024;

const OPT_OUT: &str = " (or, if this access is intended, open with FileAuditOptions::allow_insecure_permissions(true))";

/// One line of the log, as written.
#[derive(Serialize)]
struct LineOut<'a> {
    format: u64,
    seq: u64,
    prev_hash: &'a str,
    hash: &'a str,
    key_id: &'a str,
    mac: &'a str,
    event: &'a AuditEvent,
}

/// One line of the log, as read (the format is checked first). Unknown
/// fields are refused here and in the event.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineIn {
    #[allow(dead_code)]
    format: u64,
    seq: u64,
    prev_hash: String,
    hash: String,
    key_id: String,
    mac: String,
    event: AuditEvent,
}

/// Parse one line (without its newline) into an entry, or say what is wrong.
fn parse_line(bytes: &[u8]) -> std::result::Result<AuditEntry, String> {
    #[derive(Deserialize)]
    struct Probe {
        format: Option<serde_json::Value>,
    }
    if bytes.is_empty() {
        return Err("empty line".into());
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(|e| format!("not a JSON object ({e})"))?;
    match probe.format {
        Some(v) if v.as_u64() == Some(FORMAT) => {}
        Some(v) => return Err(format!("unknown format version {v} (this keywheel reads format {FORMAT})")),
        None => return Err("no \"format\" field".into()),
    }
    let line: LineIn = serde_json::from_slice(bytes).map_err(|e| format!("not an audit entry ({e})"))?;
    let entry = AuditEntry {
        seq: line.seq,
        prev_hash: line.prev_hash,
        hash: line.hash,
        key_id: line.key_id,
        mac: line.mac,
        event: line.event,
    };
    // The hash covers the parsed event, so bytes that parse to the same entry
    // but differ from what keywheel writes (extra whitespace, reordered keys,
    // other escapes) would verify: refuse anything but the canonical line.
    let canonical = encode_json(&entry).map_err(|e| e.to_string())?;
    if canonical != bytes {
        return Err("not in canonical form: the line differs from the encoding of the entry it parses to \
                    (reformatted, reordered or re-escaped by something other than keywheel)"
            .into());
    }
    Ok(entry)
}

/// The line of `entry`, without its newline.
fn encode_json(entry: &AuditEntry) -> Result<Vec<u8>> {
    let out = LineOut {
        format: FORMAT,
        seq: entry.seq,
        prev_hash: &entry.prev_hash,
        hash: &entry.hash,
        key_id: &entry.key_id,
        mac: &entry.mac,
        event: &entry.event,
    };
    serde_json::to_vec(&out).map_err(|e| Error::Audit(format!("cannot encode audit entry: {e}")))
}

fn encode_line(entry: &AuditEntry) -> Result<Vec<u8>> {
    let mut line = encode_json(entry)?;
    line.push(b'\n');
    Ok(line)
}

/// The end of the log: the last complete line and any incomplete one after it.
#[derive(Debug, Default)]
struct Tail {
    /// Offset just past the last newline (0 if there is none).
    complete_len: u64,
    /// Offset and bytes (without newline) of the last complete line.
    last_line: Option<(u64, Vec<u8>)>,
    /// Offset and bytes of an incomplete last line (no final newline).
    torn: Option<(u64, Vec<u8>)>,
}

/// Read the end of a `len`-byte log backwards, chunk by chunk, until the last
/// complete line is found: opening costs the same for a short and a huge log.
fn read_tail(file: &File, len: u64) -> io::Result<Tail> {
    let mut start = len;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // Positions in `buf` are relative to `start`.
        let last_nl = buf.iter().rposition(|&b| b == b'\n');
        let found = match last_nl {
            Some(p1) => match buf[..p1].iter().rposition(|&b| b == b'\n') {
                Some(p0) => Some((Some(p0 + 1), Some(p1))),
                None if start == 0 => Some((Some(0), Some(p1))),
                None => None,
            },
            None if start == 0 => Some((None, None)),
            None => None,
        };
        if let Some((line_start, line_end)) = found {
            let mut tail = Tail::default();
            let torn_from = line_end.map_or(0, |p1| p1 + 1);
            if torn_from < buf.len() {
                tail.torn = Some((start + torn_from as u64, buf[torn_from..].to_vec()));
            }
            tail.complete_len = start + torn_from as u64;
            if let (Some(s), Some(e)) = (line_start, line_end) {
                tail.last_line = Some((start + s as u64, buf[s..e].to_vec()));
            }
            return Ok(tail);
        }
        let step = TAIL_CHUNK.min(start);
        start -= step;
        let mut chunk = vec![0u8; usize::try_from(step).map_err(io::Error::other)?];
        file.read_exact_at(&mut chunk, start)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
    }
}

/// An incomplete last line that a sink discarded (and recorded as an
/// [`AuditKind::LogRecovered`] event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Byte offset where the incomplete line started; the log was cut there.
    pub offset: u64,
    /// Number of bytes discarded.
    pub discarded: u64,
    /// Sequence number of the last intact entry before it, if any.
    pub after_seq: Option<u64>,
    /// The `detail` of the recorded `LogRecovered` event.
    pub detail: String,
}

/// The chain head as this process last saw it, and the log length it saw.
#[derive(Debug)]
struct Head {
    chain: AuditChain,
    /// The last complete entry of the log as last read or appended.
    last: Option<AuditEntry>,
    /// The newest head this sink has seen (or was told to expect): the log
    /// may grow past it, never fall back behind it or replace it.
    seen: Option<ChainHead>,
    /// Length of the log after our last read or append; `None` forces a re-read.
    known_len: Option<u64>,
}

/// How [`FileAuditSink`] opens its log. `FileAuditSink::open(path)` is
/// `FileAuditOptions::new().open(path)`.
#[derive(Debug, Clone, Default)]
pub struct FileAuditOptions {
    allow_insecure_permissions: bool,
    expected_head: Option<ChainHead>,
}

impl FileAuditOptions {
    /// The defaults: refuse a log that the group or other users can read or write.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accept a log file that the group or other users can read or write
    /// (default `false`: refused, since anyone who can write it can rewrite
    /// history, and its entries name every keyring, actor and reason).
    pub fn allow_insecure_permissions(mut self, allow: bool) -> Self {
        self.allow_insecure_permissions = allow;
        self
    }

    /// A head anchored elsewhere (e.g. printed by `keywheel audit verify` and
    /// kept in a ticket): opening refuses a log that does not contain it —
    /// shorter (truncated, wiped, replaced by a new file) or with another
    /// entry at its place ([`Error::Audit`]) — and the sink then treats it as
    /// a head it has seen (see [`FileAuditSink`]).
    pub fn expect_head(mut self, head: ChainHead) -> Self {
        self.expected_head = Some(head);
        self
    }

    /// Open (or create) the log at `path`. See [`FileAuditSink::open`].
    pub fn open(&self, path: impl AsRef<Path>) -> Result<FileAuditSink> {
        FileAuditSink::open_with(path.as_ref(), self)
    }
}

/// An [`AuditSink`] writing an append-only JSON Lines file, one
/// hash-chained, authenticated entry per line
/// (`{"format":1,"seq":…,"prev_hash":…,"hash":…,"key_id":…,"mac":…,"event":{…}}`),
/// chained with [`AuditChain`] and MACed under the integrity key passed to
/// [`record`](AuditSink::record).
///
/// * **Durable**: every event is one `write` of a whole line followed by an
///   fsync; [`record`](AuditSink::record) returns only after that, so the
///   operation it audits happens only once its event is on disk (fail closed).
/// * **Shared**: several processes may append to the same file; each append
///   holds an OS file lock on the log and continues the chain from the
///   current last line.
/// * **Crash recovery**: an incomplete last line (a crash in the middle of
///   an append) is detected before the next append (the first one after
///   open, since only `record` has the key to authenticate the report), cut
///   off, reported by [`recoveries`](Self::recoveries), and recorded as an
///   [`AuditKind::LogRecovered`] event that says what was discarded.
/// * **Verification**: [`verify_log`] checks the whole file and reports any
///   other damage (edited, deleted, reordered, unparseable or non-canonical
///   lines, MACs when given the keys) by line number.
/// * **Never a new chain behind the sink's back**: the sink remembers the
///   newest head (seq and hash) it has seen. If the log at the path is later
///   found shorter than that head (truncated, wiped, or moved away by log
///   rotation and replaced by a new file) or with another entry at its place,
///   the next `record` fails with [`Error::Audit`] instead of continuing (or
///   restarting at seq 0): the operation being audited does not happen until
///   an operator restores the log. [`FileAuditOptions::expect_head`] gives a
///   new process a head anchored elsewhere. Other processes appending to the
///   log are fine: the sink continues after their entries. Before appending,
///   the sink also checks the MAC of the last entry when it is under the same
///   key, so it does not extend a chain whose end was forged.
///
/// The file is created with mode 0600; a log that the group or other users
/// can read or write is refused, with the `chmod` that fixes it
/// ([`FileAuditOptions::allow_insecure_permissions`] opts out): whoever can
/// write it can rewrite history, and it names every keyring, actor and reason.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> keywheel_core::Result<()> {
/// use keywheel_core::{AuditEvent, AuditKind, AuditSink, ChainVerifier, IntegrityKey, Outcome, Timestamp};
/// use keywheel_file::{FileAuditSink, verify_log};
///
/// let dir = tempfile::tempdir().expect("tempdir");
/// let path = dir.path().join("audit.jsonl");
/// let key = IntegrityKey::derive(&[7; 32], b"example");
/// let sink = FileAuditSink::open(&path)?;
/// let event = AuditEvent {
///     at: Timestamp::from_millis(0), actor: "ops".into(), keyring: None,
///     kind: AuditKind::PolicyChanged { summary: "interval 30 d".into() },
///     reason: None, correlation_id: "c1".into(), outcome: Outcome::Success,
/// };
/// sink.record(&event, &key).await?;
/// sink.record(&event, &key).await?;
/// let keys = [key];
/// let report = verify_log(&path, &ChainVerifier::new().keys(&keys))?;
/// assert!(report.is_intact() && report.macs_checked);
/// assert_eq!(report.entries, 2);
/// assert_eq!(report.head.map(|h| h.seq), Some(1));
/// # Ok(()) }
/// ```
pub struct FileAuditSink {
    lock: ProcessLock<Head>,
    recoveries: Mutex<Vec<Recovery>>,
}

impl fmt::Debug for FileAuditSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileAuditSink").field("path", &self.lock.path()).finish_non_exhaustive()
    }
}

impl FileAuditSink {
    /// Open the log at `path`, creating it (mode 0600) if it does not exist;
    /// its directory must exist. Refuses a log the group or other users can read or write, and a
    /// log whose last complete line is not an entry (it cannot be continued;
    /// [`verify_log`] locates the damage). An incomplete last line is repaired
    /// by the first append, as described on [`FileAuditSink`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        FileAuditOptions::new().open(path)
    }

    /// Options for opening a log.
    pub fn options() -> FileAuditOptions {
        FileAuditOptions::new()
    }

    fn open_with(path: &Path, options: &FileAuditOptions) -> Result<Self> {
        let path = path.to_path_buf();
        let existed = path.exists();
        let mut file_options = OpenOptions::new();
        file_options.read(true).append(true).create(true).mode(FILE_MODE);
        let head = Head { chain: AuditChain::new(), last: None, seen: None, known_len: None };
        let lock = ProcessLock::open(BACKEND, path.clone(), file_options, head)?;
        if !existed {
            sync_dir(BACKEND, fsio::parent_dir(&path))?;
        }
        let meta = lock.lock(BACKEND)?.file.metadata().map_err(|e| BACKEND.io(&path, "inspect", &e))?;
        if !meta.is_file() {
            return Err(BACKEND.err(&path, "is not a regular file; give the path of an audit log file"));
        }
        if !options.allow_insecure_permissions {
            fsio::check_mode(BACKEND, &path, &meta, FILE_MODE, OPT_OUT)?;
        }
        let sink = FileAuditSink { lock, recoveries: Mutex::new(Vec::new()) };
        let mut guard = sink.lock.lock(BACKEND)?;
        if let Some(expected) = &options.expected_head {
            // The tail check in sync_head only sees the last entry: an
            // expected head further back is looked up in the whole file.
            let bytes = fs::read(&path).map_err(|e| BACKEND.io(&path, "read", &e))?;
            let scan = scan_lines(&bytes);
            let found = scan.entries.iter().map(|(_, e)| e).find(|e| e.seq == expected.seq);
            let problem = match found {
                None => Some("no entry has its sequence number (the log is shorter)".to_owned()),
                Some(e) if e.hash != expected.hash => Some(format!("the entry at its place has hash {}", e.hash)),
                Some(_) => None,
            };
            if let Some(problem) = problem {
                return Err(Error::Audit(format!(
                    "{}: the log does not contain the expected head {expected}: {problem}; it was truncated, \
                     wiped or rewritten. Refusing to continue it: restore the log from a backup (or check the \
                     anchored head)",
                    path.display(),
                )));
            }
            guard.state.seen = Some(expected.clone());
        }
        sink.sync_head(&mut guard, None)?;
        drop(guard);
        Ok(sink)
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        self.lock.path()
    }

    /// The incomplete last lines this sink discarded (on open, or before an
    /// append after another process crashed in the middle of one), oldest first.
    pub fn recoveries(&self) -> Vec<Recovery> {
        self.recoveries.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The newest head this sink has seen (read, appended, or given with
    /// [`FileAuditOptions::expect_head`]); `None` while the log is empty.
    pub fn seen_head(&self) -> Result<Option<ChainHead>> {
        Ok(self.lock.lock(BACKEND)?.state.seen.clone())
    }

    /// Verify the whole log now with `verifier` (see [`verify_log`]), also
    /// expecting the newest head this sink has seen: a log cut back or
    /// replaced behind the sink's back is reported as
    /// [`ChainViolationKind::Truncated`](keywheel_core::ChainViolationKind::Truncated)
    /// or [`HeadMismatch`](keywheel_core::ChainViolationKind::HeadMismatch).
    pub fn verify(&self, verifier: &ChainVerifier<'_>) -> Result<LogReport> {
        let verifier = match self.seen_head()? {
            Some(head) => verifier.clone().expect_head(head),
            None => verifier.clone(),
        };
        verify_log(self.path(), &verifier)
    }

    /// Make the chain head current (under the lock): if the log changed since
    /// this process last saw it (another process appended, or crashed in the
    /// middle of an append), continue from its last complete line; refuse a
    /// log that fell behind the head seen; with a `key` (an append follows),
    /// repair an incomplete last line and record that under the key.
    fn sync_head(&self, guard: &mut LockGuard<'_, Head>, key: Option<&IntegrityKey>) -> Result<()> {
        let path = self.path();
        if guard.reopened {
            // The log at the path was replaced (rotated, moved): start over from its content.
            guard.reopened = false;
            guard.state.known_len = None;
        }
        let len = guard.file.metadata().map_err(|e| BACKEND.io(path, "inspect", &e))?.len();
        if guard.state.known_len == Some(len) {
            return Ok(());
        }
        let tail = read_tail(&guard.file, len).map_err(|e| BACKEND.io(path, "read the end of the log", &e))?;
        let last = match &tail.last_line {
            Some((offset, bytes)) => Some(parse_line(bytes).map_err(|problem| {
                BACKEND.err(
                    path,
                    format!(
                        "the last complete line (at byte {offset}) is damaged: {problem}; the log cannot be \
                         continued. Locate the damage with keywheel_file::verify_log, then restore the log \
                         from a backup or move it aside to start a new one"
                    ),
                )
            })?),
            None => None,
        };
        if let Some(seen) = guard.state.seen.clone() {
            let problem = match &last {
                None => Some("is empty".to_owned()),
                Some(l) if l.seq < seen.seq => Some(format!("ends at entry seq {}", l.seq)),
                Some(l) if l.seq == seen.seq && l.hash != seen.hash => {
                    Some(format!("has another entry at seq {} (hash {})", l.seq, l.hash))
                }
                Some(_) => None,
            };
            if let Some(problem) = problem {
                guard.state.known_len = None;
                return Err(Error::Audit(format!(
                    "{}: the audit log {problem}, but this process has seen entry seq {} (hash {}): it was \
                     truncated, wiped or replaced (log rotation is not supported for a live log); refusing to \
                     continue or start a new chain. Restore the log, then check it with `keywheel audit verify \
                     --expect-head {seen}`",
                    path.display(),
                    seen.seq,
                    seen.hash,
                )));
            }
        }
        guard.state.chain = last.as_ref().map_or_else(AuditChain::new, AuditChain::after);
        if let Some(l) = &last {
            guard.state.seen = Some(l.head());
        }
        guard.state.last = last.clone();
        let Some((offset, torn)) = tail.torn else {
            guard.state.known_len = Some(len);
            return Ok(());
        };
        let Some(key) = key else {
            // Repaired by the next append, which can authenticate its report.
            guard.state.known_len = None;
            return Ok(());
        };
        // A crash in the middle of an append: nobody was told this event was
        // recorded (record returns after the fsync), so cut it off and say so.
        guard.state.known_len = None;
        guard.file.set_len(tail.complete_len).map_err(|e| BACKEND.io(path, "cut off the incomplete last line", &e))?;
        guard.file.sync_data().map_err(|e| BACKEND.io(path, "fsync", &e))?;
        guard.state.known_len = Some(tail.complete_len);
        let after_seq = last.as_ref().map(|e| e.seq);
        let digest: String = Sha256::digest(&torn).iter().take(16).map(|b| format!("{b:02x}")).collect();
        let preview: String = String::from_utf8_lossy(&torn[..torn.len().min(160)]).escape_debug().collect();
        let detail = format!(
            "{}: incomplete last line discarded ({} bytes at byte offset {offset}, after entry seq {}; \
             sha256 prefix {digest}); it starts with \"{preview}\"",
            path.display(),
            torn.len(),
            after_seq.map_or_else(|| "none".to_owned(), |s| s.to_string()),
        );
        let event = AuditEvent {
            at: SystemClock.now(),
            actor: RECOVERY_ACTOR.to_owned(),
            keyring: None,
            kind: AuditKind::LogRecovered { detail: detail.clone() },
            reason: Some("crash recovery".to_owned()),
            correlation_id: correlation_id()?,
            outcome: Outcome::Success,
        };
        self.append(guard, &event, key)?;
        self.recoveries.lock().unwrap_or_else(PoisonError::into_inner).push(Recovery {
            offset,
            discarded: torn.len() as u64,
            after_seq,
            detail,
        });
        Ok(())
    }

    /// Append one entry (under the lock, head current) and fsync it.
    fn append(&self, guard: &mut LockGuard<'_, Head>, event: &AuditEvent, key: &IntegrityKey) -> Result<()> {
        let path = self.path();
        if let Some(last) = &guard.state.last
            && last.key_id == key.id()
            && !key.verify_hex(AUDIT_MAC_LABEL, last.hash.as_bytes(), &last.mac)
        {
            return Err(Error::Audit(format!(
                "{}: the last entry (seq {}) does not carry a valid MAC under this process's integrity key: \
                 the log was rewritten without the key; refusing to continue it. Locate the damage with \
                 `keywheel audit verify`",
                path.display(),
                last.seq
            )));
        }
        let entry = guard.state.chain.entry(event.clone(), key)?;
        let line = encode_line(&entry)?;
        let before = guard.state.known_len;
        // Until the append is known complete, force a re-read of the tail.
        guard.state.known_len = None;
        guard.file.write_all(&line).map_err(|e| BACKEND.io(path, "append to the audit log", &e))?;
        guard.file.sync_data().map_err(|e| BACKEND.io(path, "fsync the audit log", &e))?;
        guard.state.chain.commit(&entry);
        guard.state.seen = Some(entry.head());
        guard.state.last = Some(entry);
        guard.state.known_len = before.map(|len| len + line.len() as u64);
        Ok(())
    }
}

#[async_trait]
impl AuditSink for FileAuditSink {
    async fn record(&self, event: &AuditEvent, key: &IntegrityKey) -> Result<()> {
        let mut guard = self.lock.lock(BACKEND)?;
        self.sync_head(&mut guard, Some(key))?;
        self.append(&mut guard, event, key)
    }

    /// Every entry in the file, oldest first. A line that does not parse is an
    /// error naming its line number; an incomplete last line (an append in
    /// progress or interrupted) is not an entry and is left out.
    async fn entries(&self) -> Result<Option<Vec<AuditEntry>>> {
        let path = self.path();
        let bytes = fs::read(path).map_err(|e| BACKEND.io(path, "read", &e))?;
        let scan = scan_lines(&bytes);
        if let Some((line, problem)) = scan.bad.first() {
            return Err(
                BACKEND.err(path, format!("line {line}: {problem}; check the log with keywheel_file::verify_log"))
            );
        }
        Ok(Some(scan.entries.into_iter().map(|(_, e)| e).collect()))
    }
}

/// All lines of a log: the entries with their line numbers, the bad lines,
/// the incomplete last line.
struct Scan {
    entries: Vec<(u64, AuditEntry)>,
    bad: Vec<(u64, String)>,
    lines: u64,
    torn: Option<(u64, u64, u64)>,
}

fn scan_lines(bytes: &[u8]) -> Scan {
    let mut scan = Scan { entries: Vec::new(), bad: Vec::new(), lines: 0, torn: None };
    let mut offset = 0usize;
    while offset < bytes.len() {
        let number = scan.lines + 1;
        match bytes[offset..].iter().position(|&b| b == b'\n') {
            Some(n) => {
                match parse_line(&bytes[offset..offset + n]) {
                    Ok(entry) => scan.entries.push((number, entry)),
                    Err(problem) => scan.bad.push((number, problem)),
                }
                scan.lines = number;
                offset += n + 1;
            }
            None => {
                scan.torn = Some((number, offset as u64, (bytes.len() - offset) as u64));
                break;
            }
        }
    }
    scan
}

/// A complete line of the log that is not an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadLine {
    /// 1-based line number.
    pub line: u64,
    /// What is wrong with it.
    pub problem: String,
}

/// The first place where the chain of parsed entries fails verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainBreak {
    /// 1-based line number of the entry verification stopped at (the line
    /// after the last for a truncation).
    pub line: u64,
    /// The violation (its `index` counts parsed entries, not lines).
    pub violation: ChainViolation,
}

/// An incomplete last line: a crash in the middle of an append. The next
/// [`FileAuditSink::open`] cuts it off and records a `LogRecovered` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TornLine {
    /// 1-based line number.
    pub line: u64,
    /// Byte offset where it starts.
    pub offset: u64,
    /// Its length in bytes.
    pub bytes: u64,
}

/// The last entry of a log: anchor it elsewhere (seq and hash) to detect a
/// deleted tail, which the chain alone cannot show.
pub type LogHead = ChainHead;

/// What [`verify_log`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogReport {
    /// The log.
    pub path: PathBuf,
    /// Complete lines in the file.
    pub lines: u64,
    /// Lines that parsed as entries.
    pub entries: u64,
    /// Complete lines that are not entries, in file order.
    pub bad_lines: Vec<BadLine>,
    /// The first chain violation among the parsed entries (edited, missing,
    /// reordered or relinked entries, a bad MAC or unknown key when MACs were
    /// checked, a missing expected head), if any.
    pub chain_break: Option<ChainBreak>,
    /// Whether MACs were checked (the verifier was given keys). Without keys
    /// only the structure was checked: anyone who can write the log could
    /// have re-hashed it.
    pub macs_checked: bool,
    /// An incomplete last line, if any.
    pub torn_last_line: Option<TornLine>,
    /// The last parsed entry.
    pub head: Option<LogHead>,
}

impl LogReport {
    /// Nothing is wrong: every line is an entry and the chain verifies.
    pub fn is_intact(&self) -> bool {
        self.bad_lines.is_empty() && self.chain_break.is_none() && self.torn_last_line.is_none()
    }

    /// At most an incomplete last line is wrong (what a crash leaves), which
    /// the next open repairs; everything else verifies.
    pub fn is_intact_but_torn(&self) -> bool {
        self.bad_lines.is_empty() && self.chain_break.is_none()
    }
}

impl fmt::Display for LogReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.is_intact() {
            "intact"
        } else if self.is_intact_but_torn() {
            "intact up to an incomplete last line"
        } else {
            "DAMAGED"
        };
        write!(f, "{}: {} entries on {} lines, {verdict}", self.path.display(), self.entries, self.lines)?;
        if self.macs_checked {
            write!(f, "; MACs checked")?;
        } else {
            write!(f, "; MACs NOT checked (no key given: structure only)")?;
        }
        match &self.head {
            Some(head) => write!(f, "\n  head: {head}")?,
            None => write!(f, "\n  head: none (empty log)")?,
        }
        for bad in &self.bad_lines {
            write!(f, "\n  line {}: not an entry: {}", bad.line, bad.problem)?;
        }
        if let Some(b) = &self.chain_break {
            write!(f, "\n  line {}: chain broken at seq {}: {}", b.line, b.violation.seq, b.violation.kind)?;
        }
        if let Some(t) = &self.torn_last_line {
            write!(f, "\n  line {}: incomplete last line ({} bytes); the next open repairs it", t.line, t.bytes)?;
        }
        Ok(())
    }
}

/// Verify a log file: parse every line (a line that is not exactly the
/// canonical encoding of an entry — unknown fields, reordered keys — is a bad
/// line), check the chain with `verifier` (structure; MACs when it has keys;
/// expected heads), and report problems by 1-based line number. Read-only.
/// Errors only if the file cannot be read.
///
/// A truncation against an expected head is reported at the line after the
/// last one ([`ChainViolationKind::Truncated`](keywheel_core::ChainViolationKind::Truncated)).
///
/// ```
/// # fn main() -> keywheel_core::Result<()> {
/// let dir = tempfile::tempdir().expect("tempdir");
/// let path = dir.path().join("audit.jsonl");
/// std::fs::write(&path, "{\"format\":1,\"seq\":0}\n").expect("write");
/// let report = keywheel_file::verify_log(&path, &keywheel_core::ChainVerifier::new())?;
/// assert!(!report.is_intact());
/// assert_eq!(report.bad_lines[0].line, 1);
/// # Ok(()) }
/// ```
pub fn verify_log(path: impl AsRef<Path>, verifier: &ChainVerifier<'_>) -> Result<LogReport> {
    let path = path.as_ref();
    let bytes = fs::read(path).map_err(|e| BACKEND.io(path, "read", &e))?;
    let scan = scan_lines(&bytes);
    let (numbers, entries): (Vec<u64>, Vec<AuditEntry>) = scan.entries.into_iter().unzip();
    let chain_break = verifier.verify(&entries).err().map(|violation| ChainBreak {
        line: numbers.get(violation.index).copied().unwrap_or(scan.lines + 1),
        violation,
    });
    Ok(LogReport {
        path: path.to_path_buf(),
        lines: scan.lines,
        entries: entries.len() as u64,
        bad_lines: scan.bad.into_iter().map(|(line, problem)| BadLine { line, problem }).collect(),
        chain_break,
        macs_checked: verifier.checks_macs(),
        torn_last_line: scan.torn.map(|(line, offset, bytes)| TornLine { line, offset, bytes }),
        head: entries.last().map(AuditEntry::head),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail_of(content: &[u8]) -> Tail {
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(content).expect("write");
        read_tail(&file, content.len() as u64).expect("tail")
    }

    #[test]
    fn tail_finds_last_line_and_torn_rest() {
        let t = tail_of(b"");
        assert_eq!((t.complete_len, t.last_line, t.torn), (0, None, None));
        let t = tail_of(b"abc");
        assert_eq!((t.complete_len, t.last_line, t.torn), (0, None, Some((0, b"abc".to_vec()))));
        let t = tail_of(b"one\n");
        assert_eq!((t.complete_len, t.last_line, t.torn), (4, Some((0, b"one".to_vec())), None));
        let t = tail_of(b"one\ntwo\nthr");
        assert_eq!((t.complete_len, t.last_line, t.torn), (8, Some((4, b"two".to_vec())), Some((8, b"thr".to_vec()))));
        // Lines longer than one read chunk.
        let long = vec![b'x'; (TAIL_CHUNK as usize) * 2 + 17];
        let content = [b"first\n".as_slice(), &long, b"\n", &long[..100]].concat();
        let t = tail_of(&content);
        assert_eq!(t.last_line, Some((6, long.clone())));
        assert_eq!(t.torn, Some((6 + long.len() as u64 + 1, long[..100].to_vec())));
    }

    #[test]
    fn lines_need_the_format() {
        assert_eq!(parse_line(b"").expect_err("empty"), "empty line");
        assert!(parse_line(b"{\"format\":2}").expect_err("v2").contains("unknown format version 2"));
        assert!(parse_line(b"{\"seq\":1}").expect_err("none").contains("no \"format\""));
        assert!(parse_line(b"{\"format\":1,\"seq\":1}").expect_err("partial").contains("not an audit entry"));
        assert!(parse_line(b"{\"format\":1,").expect_err("cut").contains("not a JSON object"));
    }
}
