//! A zero-downtime master-key (KEK) rotation under a live application: real
//! application processes encrypt, decrypt and reload keyrings in a loop
//! while the operator runs the manual's runbook with the real `keywheel`
//! binary — stage the next key in the application, `kek rotate`, start an
//! application with the next key promoted to current, stop the old one, drop
//! the old key — and not one operation fails.
//!
//! The application is this test binary itself, started again to run only
//! [`live_application_process`] (ignored in normal runs: it is the child,
//! configured through `LIVE_APP_*` variables and the usual
//! `KEYWHEEL_MASTER_KEY`/`KEYWHEEL_MASTER_KEY_NEXT`).
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "../../keywheel-postgres/tests/common/mod.rs"]
mod common;
#[path = "support/postgres.rs"]
mod pg;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keywheel_core::{AuditSink, Context, KekRing, KeyStore, KeyringId, Keywheel, MASTER_KEY_ENV, NEXT_MASTER_KEY_ENV};
use keywheel_file::{FileAuditSink, FileKeyStore};
use keywheel_postgres::{PgAuditSink, PgKeyStore, PgPool, PgSchema};
use pg::postgres_url;
use serde_json::{Value, json};
use support::Cli;

const KEYRING: &str = "acme/token";
/// Operations each phase must see succeed, per application process.
const MIN_OPS: u64 = 40;
const PHASE_TIMEOUT: Duration = Duration::from_secs(90);

/// One application process: its stats file and stop file.
struct App {
    child: Child,
    stats: PathBuf,
    stop: PathBuf,
}

impl App {
    /// Start the application on `store` with the master key `current` and,
    /// if given, the staged `next` one (base64, as an operator sets them).
    fn start(dir: &Path, name: &str, store: &str, current: &str, next: Option<&str>) -> App {
        let stats = dir.join(format!("{name}.stats.json"));
        let stop = dir.join(format!("{name}.stop"));
        let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
        cmd.args(["live_application_process", "--exact", "--ignored", "--nocapture", "--test-threads=1"]);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("KEYWHEEL_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("LIVE_APP_STORE", store)
            .env("LIVE_APP_VALUES", dir.join("values.tsv"))
            .env("LIVE_APP_STATS", &stats)
            .env("LIVE_APP_STOP", &stop)
            .env("LIVE_APP_NAME", name)
            .env(MASTER_KEY_ENV, current)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(next) = next {
            cmd.env(NEXT_MASTER_KEY_ENV, next);
        }
        App { child: cmd.spawn().expect("start the application"), stats, stop }
    }

    fn stats(&self) -> Value {
        std::fs::read_to_string(&self.stats).ok().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or(json!({}))
    }

    fn count(&self, what: &str) -> u64 {
        self.stats()[what].as_u64().unwrap_or(0)
    }

    /// Wait until the application has `ok` successful operations and
    /// `reloads` keyring reloads, without an error.
    fn wait_for(&mut self, ok: u64, reloads: u64, phase: &str) {
        let start = Instant::now();
        loop {
            let stats = self.stats();
            assert_eq!(stats["errors"].as_u64().unwrap_or(0), 0, "{phase}: the application saw errors: {stats}");
            if stats["ok"].as_u64().unwrap_or(0) >= ok && stats["reloads"].as_u64().unwrap_or(0) >= reloads {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("poll") {
                panic!("{phase}: the application exited early ({status}): {stats}\n{}", self.stderr());
            }
            assert!(start.elapsed() < PHASE_TIMEOUT, "{phase}: no progress to {ok} ok / {reloads} reloads: {stats}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&mut self) -> String {
        use std::io::Read as _;
        let mut err = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = pipe.read_to_string(&mut err);
        }
        err
    }

    /// Stop it and return its final stats.
    fn stop(mut self) -> Value {
        std::fs::write(&self.stop, b"stop").expect("stop file");
        let status = self.child.wait().expect("wait");
        let stats = self.stats();
        assert!(status.success(), "the application failed ({status}): {stats}\n{}", self.stderr());
        assert_eq!(stats["done"], true, "{stats}");
        stats
    }
}

impl Drop for App {
    /// A failed test must not leave its application running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The runbook of the manual, against a live application, on `cli`'s store
/// (`store` is what the application opens: the file store directory or a
/// Postgres connection string).
fn rotate_under_a_live_application(cli: &Cli, store: &str) {
    cli.run(&["init"]).assert_code(0);
    cli.run(&["keyring", "create", KEYRING]).assert_code(0);
    let old = std::fs::read_to_string(cli.key_file()).expect("old key").trim().to_owned();
    let next_file = cli.dir().join("next-master.key");
    cli.run(&["kek", "generate", "--out", next_file.to_str().expect("utf-8")]).assert_code(0);
    let next = std::fs::read_to_string(&next_file).expect("next key").trim().to_owned();
    let staged = ["--next-master-key-file", next_file.to_str().expect("utf-8")];

    // 1. The next key is staged in the application (current wraps, next also opens).
    let mut first = App::start(cli.dir(), "first", store, &old, Some(&next));
    first.wait_for(MIN_OPS, 2, "staged");

    // 2. `kek rotate` rewraps every key while the application runs.
    let before = first.count("ok");
    let reloads = first.count("reloads");
    let mut rotate = staged.to_vec();
    rotate.extend(["--json", "kek", "rotate"]);
    let report = cli.run(&rotate).assert_code(0);
    let report: Value = serde_json::from_str(&report.stdout).expect("json");
    assert_eq!(report["report"]["keys"], 1, "{report}");
    // The application keeps working, and has re-read the rewrapped keyring.
    first.wait_for(before + MIN_OPS, reloads + 3, "rewrapped");
    cli.run(&["keyring", "list"]).assert_code(1).assert_stderr_contains("wrong master key");

    // 3. Promotion: an application with the next key as its only key starts
    //    (a rolling restart), reads what the first one wrote, and the first stops.
    let mut second = App::start(cli.dir(), "second", store, &next, None);
    second.wait_for(MIN_OPS, 2, "promoted");
    let before = first.count("ok");
    first.wait_for(before + MIN_OPS / 2, 0, "promoted, not yet restarted");
    let first = first.stop();

    // 4. The old key is dropped: the new one alone runs everything.
    std::fs::remove_file(cli.key_file()).expect("drop the old key");
    let before = second.count("ok");
    second.wait_for(before + MIN_OPS, 0, "old key dropped");
    let promoted = ["--master-key-file", next_file.to_str().expect("utf-8")];
    let mut verify = promoted.to_vec();
    verify.extend(["audit", "verify"]);
    cli.run(&verify).assert_code(0);
    let second = second.stop();

    for stats in [&first, &second] {
        assert_eq!(stats["errors"], 0, "{stats}");
        assert!(stats["read_back"].as_u64().unwrap_or(0) >= MIN_OPS, "read earlier values: {stats}");
    }
    assert!(second["read_from_others"].as_u64().unwrap_or(0) > 0, "read the first one's values: {second}");
}

#[test]
fn a_kek_rotation_under_a_live_application_on_the_file_store_has_no_errors() {
    let cli = Cli::new(None);
    let store = cli.store().to_owned();
    rotate_under_a_live_application(&cli, &store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kek_rotation_under_a_live_application_on_postgres_has_no_errors() {
    let Some(db) = common::TestDb::create().await else { return };
    let cli = Cli::new(Some(postgres_url(&db)));
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || rotate_under_a_live_application(&cli, &url)).await.expect("runbook");
}

/// The application (a child process of the tests above): opens the store
/// with [`KekRing::from_env`], then until told to stop encrypts a new value
/// and decrypts it, decrypts values written earlier (by itself and by other
/// application processes), and reloads the keyring from the store, counting
/// successes and errors in its stats file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the application process started by the live KEK rotation tests, not a test by itself"]
async fn live_application_process() {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name}: run by the live KEK rotation tests"));
    let (store_at, values, stats, stop, name) = (
        var("LIVE_APP_STORE"),
        var("LIVE_APP_VALUES"),
        var("LIVE_APP_STATS"),
        var("LIVE_APP_STOP"),
        var("LIVE_APP_NAME"),
    );
    let kek = Arc::new(KekRing::from_env(MASTER_KEY_ENV, NEXT_MASTER_KEY_ENV).expect("master keys"));
    let (store, audit): (Arc<dyn KeyStore>, Arc<dyn AuditSink>) = if Path::new(&store_at).is_dir() {
        let store = FileKeyStore::options().create(false).open(&store_at).expect("file store");
        (Arc::new(store), Arc::new(FileAuditSink::open(Path::new(&store_at).join("audit.jsonl")).expect("audit log")))
    } else {
        let pool = PgPool::without_tls(&store_at).expect("pool");
        let schema = PgSchema::new(PgSchema::DEFAULT).expect("schema");
        (Arc::new(PgKeyStore::new(pool.clone(), schema.clone())), Arc::new(PgAuditSink::new(pool, schema)))
    };
    let kw = Keywheel::builder()
        .store(store)
        .audit(audit)
        .kek(kek)
        .actor(format!("app:{name}"))
        .refresh_interval(Duration::from_millis(300))
        .reload_cooldown(Duration::ZERO)
        .build()
        .expect("keywheel");
    let id: KeyringId = KEYRING.parse().expect("keyring id");
    let mut counts = Counts::default();
    let mut i: u64 = 0;
    while !Path::new(&stop).exists() {
        i += 1;
        let row = format!("{name}-{i}");
        let plaintext = format!("secret {row}");
        let context = Context::field("users", "email", &row);
        // A new value, read back at once.
        match kw.encrypt_text(&id, plaintext.as_bytes(), &context).await {
            Ok(value) => match kw.decrypt(&id, value.as_bytes(), &context).await {
                Ok(p) if p[..] == *plaintext.as_bytes() => {
                    counts.ok += 1;
                    append_line(&values, &format!("{row}\t{value}\n"));
                }
                other => counts.error(format!("decrypt own value: {:?}", other.map(|p| p.len()))),
            },
            Err(e) => counts.error(format!("encrypt: {e}")),
        }
        // Values written earlier, by this process and others.
        if i.is_multiple_of(3) {
            let lines = std::fs::read_to_string(&values).unwrap_or_default();
            let lines: Vec<&str> = lines.lines().collect();
            for line in lines.iter().rev().take(2).chain(lines.get((i as usize * 7) % lines.len().max(1))) {
                let Some((row, value)) = line.split_once('\t') else { continue };
                let context = Context::field("users", "email", row);
                match kw.decrypt(&id, value.as_bytes(), &context).await {
                    Ok(p) if p[..] == *format!("secret {row}").as_bytes() => {
                        counts.ok += 1;
                        counts.read_back += 1;
                        if !row.starts_with(&format!("{name}-")) {
                            counts.read_from_others += 1;
                        }
                    }
                    other => counts.error(format!("decrypt {row}: {:?}", other.map(|p| p.len()))),
                }
            }
        }
        // Re-read the keyring from the store (as after a change announcement).
        if i.is_multiple_of(4) {
            match kw.refresh(&id).await {
                Ok(_) => counts.reloads += 1,
                Err(e) => counts.error(format!("reload: {e}")),
            }
        }
        counts.write(&stats, false);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if let Err(e) = kw.flush_all_usage().await {
        counts.error(format!("flush usage: {e}"));
    }
    counts.write(&stats, true);
}

#[derive(Default)]
struct Counts {
    ok: u64,
    errors: u64,
    reloads: u64,
    read_back: u64,
    read_from_others: u64,
    first_errors: Vec<String>,
}

impl Counts {
    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.first_errors.len() < 5 {
            self.first_errors.push(what);
        }
    }

    /// Replace the stats file (write and rename: readers never see half of it).
    fn write(&self, path: &str, done: bool) {
        let stats = json!({
            "ok": self.ok, "errors": self.errors, "reloads": self.reloads, "read_back": self.read_back,
            "read_from_others": self.read_from_others, "first_errors": self.first_errors, "done": done,
        });
        let tmp = format!("{path}.tmp");
        std::fs::write(&tmp, stats.to_string()).expect("write stats");
        std::fs::rename(&tmp, path).expect("replace stats");
    }
}

/// Append one line (a single `write` on an `O_APPEND` file: lines of
/// concurrent processes do not interleave).
fn append_line(path: &str, line: &str) {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("values file");
    file.write_all(line.as_bytes()).expect("append");
}
