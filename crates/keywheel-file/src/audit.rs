//! [`FileAuditSink`]: an append-only, hash-chained JSON Lines audit log, and
//! [`verify_log`], its verifier with line numbers.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use keywheel_core::{
    AuditChain, AuditEntry, AuditEvent, AuditKind, AuditSink, ChainViolation, ChainViolationKind, Clock, Error,
    Outcome, Result, SystemClock, async_trait, correlation_id, verify_chain,
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
    event: &'a AuditEvent,
}

/// One line of the log, as read (the format is checked first).
#[derive(Deserialize)]
struct LineIn {
    seq: u64,
    prev_hash: String,
    hash: String,
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
    Ok(AuditEntry { seq: line.seq, prev_hash: line.prev_hash, hash: line.hash, event: line.event })
}

fn encode_line(entry: &AuditEntry) -> Result<Vec<u8>> {
    let out =
        LineOut { format: FORMAT, seq: entry.seq, prev_hash: &entry.prev_hash, hash: &entry.hash, event: &entry.event };
    let mut line = serde_json::to_vec(&out).map_err(|e| Error::Audit(format!("cannot encode audit entry: {e}")))?;
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
    /// Length of the log after our last read or append; `None` forces a re-read.
    known_len: Option<u64>,
}

/// How [`FileAuditSink`] opens its log. `FileAuditSink::open(path)` is
/// `FileAuditOptions::new().open(path)`.
#[derive(Debug, Clone, Default)]
pub struct FileAuditOptions {
    allow_insecure_permissions: bool,
}

impl FileAuditOptions {
    /// The defaults: refuse a log that the group or other users can write.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accept a log file that the group or other users can write (default
    /// `false`: refused, since anyone who can write it can rewrite history).
    pub fn allow_insecure_permissions(mut self, allow: bool) -> Self {
        self.allow_insecure_permissions = allow;
        self
    }

    /// Open (or create) the log at `path`. See [`FileAuditSink::open`].
    pub fn open(&self, path: impl AsRef<Path>) -> Result<FileAuditSink> {
        FileAuditSink::open_with(path.as_ref(), self)
    }
}

/// An [`AuditSink`] writing an append-only JSON Lines file, one
/// hash-chained entry per line (`{"format":1,"seq":…,"prev_hash":…,"hash":…,"event":{…}}`),
/// chained with [`AuditChain`].
///
/// * **Durable**: every event is one `write` of a whole line followed by an
///   fsync; [`record`](AuditSink::record) returns only after that, so the
///   operation it audits happens only once its event is on disk (fail closed).
/// * **Shared**: several processes may append to the same file; each append
///   holds an OS file lock on the log and continues the chain from the
///   current last line.
/// * **Crash recovery**: an incomplete last line (a crash in the middle of
///   an append) is detected on open — and before any later append —, cut off,
///   reported by [`recoveries`](Self::recoveries), and recorded as an
///   [`AuditKind::LogRecovered`] event that says what was discarded.
/// * **Verification**: [`verify_log`] checks the whole file and reports any
///   other damage (edited, deleted, reordered or unparseable lines) by line number.
/// * **Foreign changes**: if the file was changed by anything else (edited,
///   cut, or moved away by log rotation, in which case the path is reopened),
///   the sink continues the chain from the last line it finds at the path, as
///   a freshly opened sink would; the verifier reports the damage. A deleted
///   tail cannot be seen from the log alone: anchor [`LogReport::head`] elsewhere.
///
/// The file is created with mode 0600; a log that the group or other users
/// can write is refused ([`FileAuditOptions::allow_insecure_permissions`] opts out).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> keywheel_core::Result<()> {
/// use keywheel_core::{AuditEvent, AuditKind, AuditSink, Outcome, Timestamp};
/// use keywheel_file::{FileAuditSink, verify_log};
///
/// let dir = tempfile::tempdir().expect("tempdir");
/// let path = dir.path().join("audit.jsonl");
/// let sink = FileAuditSink::open(&path)?;
/// let event = AuditEvent {
///     at: Timestamp::from_millis(0), actor: "ops".into(), keyring: None,
///     kind: AuditKind::PolicyChanged { summary: "interval 30 d".into() },
///     reason: None, correlation_id: "c1".into(), outcome: Outcome::Success,
/// };
/// sink.record(&event).await?;
/// sink.record(&event).await?;
/// let report = verify_log(&path)?;
/// assert!(report.is_intact());
/// assert_eq!(report.entries, 2);
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
    /// its directory must exist. Refuses a group- or world-writable log, and a
    /// log whose last complete line is not an entry (it cannot be continued;
    /// [`verify_log`] locates the damage). Repairs an incomplete last line
    /// as described on [`FileAuditSink`].
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
        let lock =
            ProcessLock::open(BACKEND, path.clone(), file_options, Head { chain: AuditChain::new(), known_len: None })?;
        if !existed {
            sync_dir(BACKEND, fsio::parent_dir(&path))?;
        }
        let meta = lock.lock(BACKEND)?.file.metadata().map_err(|e| BACKEND.io(&path, "inspect", &e))?;
        if !meta.is_file() {
            return Err(BACKEND.err(&path, "is not a regular file; give the path of an audit log file"));
        }
        if !options.allow_insecure_permissions {
            fsio::check_mode(BACKEND, &path, &meta, 0o022, FILE_MODE, OPT_OUT)?;
        }
        let sink = FileAuditSink { lock, recoveries: Mutex::new(Vec::new()) };
        let mut guard = sink.lock.lock(BACKEND)?;
        sink.sync_head(&mut guard)?;
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

    /// Verify the whole log now; see [`verify_log`].
    pub fn verify(&self) -> Result<LogReport> {
        verify_log(self.path())
    }

    /// Make the chain head current (under the lock): if the log changed since
    /// this process last saw it (another process appended, or crashed in the
    /// middle of an append), continue from its last complete line, and repair
    /// an incomplete one.
    fn sync_head(&self, guard: &mut LockGuard<'_, Head>) -> Result<()> {
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
        guard.state.chain = last.as_ref().map_or_else(AuditChain::new, AuditChain::after);
        let Some((offset, torn)) = tail.torn else {
            guard.state.known_len = Some(len);
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
        self.append(guard, &event)?;
        self.recoveries.lock().unwrap_or_else(PoisonError::into_inner).push(Recovery {
            offset,
            discarded: torn.len() as u64,
            after_seq,
            detail,
        });
        Ok(())
    }

    /// Append one entry (under the lock, head current) and fsync it.
    fn append(&self, guard: &mut LockGuard<'_, Head>, event: &AuditEvent) -> Result<()> {
        let path = self.path();
        let entry = guard.state.chain.entry(event.clone())?;
        let line = encode_line(&entry)?;
        let before = guard.state.known_len;
        // Until the append is known complete, force a re-read of the tail.
        guard.state.known_len = None;
        guard.file.write_all(&line).map_err(|e| BACKEND.io(path, "append to the audit log", &e))?;
        guard.file.sync_data().map_err(|e| BACKEND.io(path, "fsync the audit log", &e))?;
        guard.state.chain.commit(&entry);
        guard.state.known_len = before.map(|len| len + line.len() as u64);
        Ok(())
    }
}

#[async_trait]
impl AuditSink for FileAuditSink {
    async fn record(&self, event: &AuditEvent) -> Result<()> {
        let mut guard = self.lock.lock(BACKEND)?;
        self.sync_head(&mut guard)?;
        self.append(&mut guard, event)
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
    /// 1-based line number of the entry [`verify_chain`] stopped at.
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogHead {
    /// Its sequence number.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
}

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
    /// reordered or relinked entries), if any.
    pub chain_break: Option<ChainBreak>,
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
        for bad in &self.bad_lines {
            write!(f, "\n  line {}: not an entry: {}", bad.line, bad.problem)?;
        }
        if let Some(b) = &self.chain_break {
            let what = match &b.violation.kind {
                ChainViolationKind::Altered => "entry altered (its content does not match its hash)".to_owned(),
                ChainViolationKind::Missing { expected_seq } => {
                    format!("entries missing before it (expected seq {expected_seq})")
                }
                ChainViolationKind::Reordered { expected_seq } => {
                    format!("entry out of order (expected seq {expected_seq})")
                }
                ChainViolationKind::BrokenLink => "entry does not link to the entry before it".to_owned(),
                other => format!("{other:?}"),
            };
            write!(f, "\n  line {}: chain broken at seq {}: {what}", b.line, b.violation.seq)?;
        }
        if let Some(t) = &self.torn_last_line {
            write!(f, "\n  line {}: incomplete last line ({} bytes); the next open repairs it", t.line, t.bytes)?;
        }
        Ok(())
    }
}

/// Verify a log file: parse every line, check the hash chain with
/// [`verify_chain`], and report problems by 1-based line number. Read-only.
/// Errors only if the file cannot be read.
///
/// ```
/// # fn main() -> keywheel_core::Result<()> {
/// let dir = tempfile::tempdir().expect("tempdir");
/// let path = dir.path().join("audit.jsonl");
/// std::fs::write(&path, "{\"format\":1,\"seq\":0}\n").expect("write");
/// let report = keywheel_file::verify_log(&path)?;
/// assert!(!report.is_intact());
/// assert_eq!(report.bad_lines[0].line, 1);
/// # Ok(()) }
/// ```
pub fn verify_log(path: impl AsRef<Path>) -> Result<LogReport> {
    let path = path.as_ref();
    let bytes = fs::read(path).map_err(|e| BACKEND.io(path, "read", &e))?;
    let scan = scan_lines(&bytes);
    let (numbers, entries): (Vec<u64>, Vec<AuditEntry>) = scan.entries.into_iter().unzip();
    let chain_break = verify_chain(&entries)
        .err()
        .map(|violation| ChainBreak { line: numbers.get(violation.index).copied().unwrap_or(0), violation });
    Ok(LogReport {
        path: path.to_path_buf(),
        lines: scan.lines,
        entries: entries.len() as u64,
        bad_lines: scan.bad.into_iter().map(|(line, problem)| BadLine { line, problem }).collect(),
        chain_break,
        torn_last_line: scan.torn.map(|(line, offset, bytes)| TornLine { line, offset, bytes }),
        head: entries.last().map(|e| LogHead { seq: e.seq, hash: e.hash.clone() }),
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
