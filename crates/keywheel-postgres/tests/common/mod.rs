//! Test harness shared by the Postgres tests (and the benchmark).
//!
//! Finding a server, in order: `KEYWHEEL_TEST_DATABASE_URL`; a local server on
//! 127.0.0.1:5432 or the default Unix socket as user `postgres`; a throwaway
//! cluster started with `initdb`/`pg_ctl` (as the `postgres` user when running
//! as root), stopped when the test process exits. When none of that works the
//! test is skipped loudly, or fails if `KEYWHEEL_REQUIRE_POSTGRES` is set.
//!
//! Every test gets its own freshly created database, dropped afterwards
//! ([`TestDb`]'s `Drop`); databases left behind by killed runs are dropped
//! by the next run once they are two hours old.
#![allow(dead_code, unreachable_pub)]

use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keywheel_postgres::tokio_postgres::config::Host;
use keywheel_postgres::tokio_postgres::{Config, NoTls};
use keywheel_postgres::{PgPool, PgSchema};

/// A random u64 (std's per-process random hasher keys, mixed with the time).
pub fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

/// A tiny xorshift generator for test decisions (no `rand` dependency).
#[derive(Debug, Clone)]
pub struct XorShift(pub u64);

impl XorShift {
    pub fn seeded() -> Self {
        XorShift(random_u64() | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

fn quote_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `key=value` connection string of `config`, for database `dbname`.
pub fn conn_string(config: &Config, dbname: &str) -> String {
    let mut parts = Vec::new();
    if let Some(host) = config.get_hosts().first() {
        match host {
            Host::Tcp(h) => parts.push(format!("host={}", quote_value(h))),
            Host::Unix(p) => parts.push(format!("host={}", quote_value(&p.to_string_lossy()))),
        }
    }
    if let Some(port) = config.get_ports().first() {
        parts.push(format!("port={port}"));
    }
    if let Some(user) = config.get_user() {
        parts.push(format!("user={}", quote_value(user)));
    }
    if let Some(pw) = config.get_password() {
        parts.push(format!("password={}", quote_value(&String::from_utf8_lossy(pw))));
    }
    parts.push(format!("dbname={}", quote_value(dbname)));
    parts.push("connect_timeout=10".into());
    parts.join(" ")
}

fn block_on_thread<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the test harness")
            .block_on(f)
    })
    .join()
    .expect("the test harness thread panicked")
}

async fn reachable(conn: &str) -> Result<(), String> {
    let config: Config = conn.parse().map_err(|e| format!("{e}"))?;
    let (client, connection) = config.connect(NoTls).await.map_err(|e| format!("{e}"))?;
    let task = tokio::spawn(connection);
    let r = client.simple_query("SELECT 1").await.map(|_| ()).map_err(|e| format!("{e}"));
    drop(client);
    let _ = task.await;
    r
}

pub mod tls_cluster;

/// Whether this process runs as root (the server must then run as `postgres`).
pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program` run as the `postgres` OS user when `root`, as this user otherwise.
pub fn as_postgres(program: &Path, root: bool) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// The directory of `initdb` and `pg_ctl`: the newest under
/// /usr/lib/postgresql/*/bin, else `pg_config --bindir`.
pub fn postgres_bin() -> Option<PathBuf> {
    let has_tools = |p: &Path| p.join("initdb").exists() && p.join("pg_ctl").exists();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| has_tools(p))
        .collect();
    dirs.sort_by_key(|p| {
        p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0)
    });
    dirs.pop().or_else(|| {
        let out = Command::new("pg_config").arg("--bindir").output().ok()?;
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        has_tools(&dir).then_some(dir)
    })
}

/// A free TCP port on 127.0.0.1 (free when asked).
pub fn free_port() -> Option<u16> {
    for _ in 0..50 {
        let port = 20_000 + (random_u64() % 20_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Some(port);
        }
    }
    None
}

/// A throwaway cluster's directory (owned by the server's OS user): its data
/// directory, log and socket. Not started yet.
#[derive(Debug)]
pub struct ClusterDir {
    pub bin: PathBuf,
    pub root: bool,
    pub dir: PathBuf,
    pub data: PathBuf,
}

impl ClusterDir {
    /// `initdb` a new cluster (trust authentication, superuser `postgres`) in a new temporary directory.
    pub fn init() -> Result<ClusterDir, String> {
        let bin =
            postgres_bin().ok_or("initdb/pg_ctl not found under /usr/lib/postgresql/*/bin nor pg_config --bindir")?;
        let root = is_root();
        let dir = std::env::temp_dir().join(format!("keywheel-pg-{}-{:x}", std::process::id(), random_u64()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        if root {
            let ok = Command::new("chown").arg("postgres").arg(&dir).status().is_ok_and(|s| s.success());
            if !ok {
                return Err("cannot chown the cluster directory to postgres (no postgres user?)".into());
            }
        }
        let data = dir.join("data");
        let out = as_postgres(&bin.join("initdb"), root)
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .stdout(Stdio::null())
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(ClusterDir { bin, root, dir, data })
    }

    /// Make `path` owned by the server's OS user (a key file it must read).
    pub fn give_to_server(&self, path: &Path) -> Result<(), String> {
        if self.root {
            let ok = Command::new("chown").arg("postgres").arg(path).status().is_ok_and(|s| s.success());
            if !ok {
                return Err(format!("cannot chown {} to postgres", path.display()));
            }
        }
        Ok(())
    }

    /// Start the server on 127.0.0.1:`port` with `settings` (`-c name=value …`), waiting until it is up.
    pub fn start(&self, port: u16, settings: &str) -> Result<(), String> {
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200 {settings}",
            self.dir.display()
        );
        let out = as_postgres(&self.bin.join("pg_ctl"), self.root)
            .arg("-D")
            .arg(&self.data)
            .args(["-o", &opts, "-w", "-l"])
            .arg(self.dir.join("log"))
            .arg("start")
            .stdout(Stdio::null())
            .output()
            .map_err(|e| format!("pg_ctl: {e}"))?;
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
            return Err(format!("pg_ctl start failed: {}\n{log}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(())
    }

    /// A process that stops the server and removes the directory once this
    /// test process is gone (however it ends).
    pub fn watchdog(&self) -> Result<(), String> {
        let script = format!(
            "while [ -d /proc/{pid} ]; do sleep 1; done; {pg_ctl} -D {data} stop -m immediate >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            pg_ctl = self.bin.join("pg_ctl").display(),
            data = self.data.display(),
            dir = self.dir.display(),
        );
        as_postgres(Path::new("/bin/sh"), self.root)
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("watchdog: {e}"))?;
        Ok(())
    }

    /// Stop the server now and remove the directory.
    pub fn stop_and_remove(&self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"), self.root)
            .arg("-D")
            .arg(&self.data)
            .args(["stop", "-m", "immediate"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Start a throwaway cluster; its watchdog stops it when this process exits.
fn start_cluster() -> Result<String, String> {
    let cluster = ClusterDir::init()?;
    let port = free_port().ok_or("no free port")?;
    cluster.start(port, "")?;
    cluster.watchdog()?;
    eprintln!("keywheel-postgres tests: started a throwaway cluster on port {port} in {}", cluster.dir.display());
    Ok(format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"))
}

/// Fail (when `KEYWHEEL_REQUIRE_POSTGRES` is set) or skip loudly: the test
/// cannot have the server it needs, for reason `why`.
pub fn no_server(why: &str) {
    let test = std::thread::current().name().unwrap_or("?").to_owned();
    if std::env::var_os("KEYWHEEL_REQUIRE_POSTGRES").is_some() {
        panic!("KEYWHEEL_REQUIRE_POSTGRES is set but no PostgreSQL server is available: {why}");
    }
    eprintln!(
        "\n!!!!! SKIPPED {test}: no PostgreSQL server available ({why}).\n\
         !!!!! Set KEYWHEEL_TEST_DATABASE_URL, run a server on 127.0.0.1:5432, or install initdb.\n\
         !!!!! Set KEYWHEEL_REQUIRE_POSTGRES=1 to make this a failure.\n"
    );
}

/// The admin connection string of the server the tests use, or why there is none.
fn server() -> &'static Result<Config, String> {
    static SERVER: OnceLock<Result<Config, String>> = OnceLock::new();
    SERVER.get_or_init(|| {
        let parse = |s: &str| s.parse::<Config>().map_err(|e| format!("bad connection string: {e}"));
        if let Ok(url) = std::env::var("KEYWHEEL_TEST_DATABASE_URL")
            && !url.trim().is_empty()
        {
            let u = url.clone();
            return match block_on_thread(async move { reachable(&u).await }) {
                Ok(()) => parse(&url),
                Err(e) => panic!("KEYWHEEL_TEST_DATABASE_URL is set but the server is not reachable: {e}"),
            };
        }
        // KEYWHEEL_TEST_FORCE_INITDB=1 skips the local server (to exercise the fallback).
        let local = std::env::var_os("KEYWHEEL_TEST_FORCE_INITDB").is_none();
        for candidate in local
            .then_some([
                "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3",
                "host=/var/run/postgresql port=5432 user=postgres dbname=postgres connect_timeout=3",
                // The password scripts/test.sh gives a fresh cluster's superuser.
                "host=127.0.0.1 port=5432 user=postgres password=keywheel-tests dbname=postgres connect_timeout=3",
            ])
            .into_iter()
            .flatten()
        {
            let c = candidate.to_owned();
            if block_on_thread(async move { reachable(&c).await }).is_ok() {
                return parse(candidate);
            }
        }
        let started = start_cluster()?;
        let s = started.clone();
        let mut last = String::new();
        for _ in 0..50 {
            let s = s.clone();
            match block_on_thread(async move { reachable(&s).await }) {
                Ok(()) => return parse(&started),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("the throwaway cluster does not answer: {last}"))
    })
}

/// A driver's pool on a test database: what the shared suites
/// (`suites/conformance.rs`, `suites/model.rs`) run on, here and in keywheel-sqlx.
pub trait TestPool: keywheel_postgres::Driver {
    /// A pool of at most `max_size` connections on `db`.
    fn on(db: &TestDb, max_size: usize) -> Self;
}

impl TestPool for PgPool {
    fn on(db: &TestDb, max_size: usize) -> Self {
        db.pool(max_size)
    }
}

/// A freshly created database for one test, dropped when this value is dropped.
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    pub config: Config,
    /// `key=value` connection string of the test database.
    pub url: String,
    admin: Config,
}

const PREFIX: &str = "kwtest_";

impl TestDb {
    /// A new database, or `None` (after a loud message) when no server can be
    /// had and `KEYWHEEL_REQUIRE_POSTGRES` is unset.
    pub async fn create() -> Option<TestDb> {
        let admin = match server() {
            Ok(c) => c.clone(),
            Err(why) => {
                no_server(why);
                return None;
            }
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let name = format!("{PREFIX}{now}_{:012x}", random_u64() & 0xffff_ffff_ffff);
        let admin_conn = conn_string(&admin, admin.get_dbname().unwrap_or("postgres"));
        let n = name.clone();
        block_on_thread(async move {
            let config: Config = admin_conn.parse().expect("admin connection string");
            let (client, connection) = config.connect(NoTls).await.expect("connect to the test server");
            let task = tokio::spawn(connection);
            // Leftovers of killed runs, two hours old or more.
            let old = client
                .query("SELECT datname::text FROM pg_database WHERE datname LIKE 'kwtest\\_%'", &[])
                .await
                .expect("list databases");
            for row in old {
                let db: String = row.get(0);
                let born = db[PREFIX.len()..].split('_').next().and_then(|t| t.parse::<u64>().ok()).unwrap_or(now);
                if now.saturating_sub(born) > 7200 {
                    let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)")).await;
                }
            }
            client.batch_execute(&format!("CREATE DATABASE \"{n}\"")).await.expect("create the test database");
            drop(client);
            let _ = task.await;
        });
        let mut config = admin.clone();
        config.dbname(&name);
        Some(TestDb { url: conn_string(&admin, &name), name, config, admin })
    }

    /// A pool on the test database.
    pub fn pool(&self, max_size: usize) -> PgPool {
        PgPool::new(self.config.clone(), NoTls, max_size)
    }

    /// Run SQL on the test database (its own connection).
    pub async fn execute(&self, sql: &str) {
        let (client, connection) = self.config.connect(NoTls).await.expect("connect");
        let task = tokio::spawn(connection);
        client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        drop(client);
        let _ = task.await;
    }

    /// A plain client on the test database (the application's connection).
    pub async fn client(&self) -> keywheel_postgres::tokio_postgres::Client {
        let (client, connection) = self.config.connect(NoTls).await.expect("connect");
        tokio::spawn(connection);
        client
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = conn_string(&self.admin, self.admin.get_dbname().unwrap_or("postgres"));
        let name = self.name.clone();
        block_on_thread(async move {
            let Ok(config) = admin.parse::<Config>() else { return };
            let Ok((client, connection)) = config.connect(NoTls).await else { return };
            let task = tokio::spawn(connection);
            let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await;
            drop(client);
            let _ = task.await;
        });
    }
}

impl TestDb {
    /// A pool on the test database, connecting as `user` (trust authentication).
    pub fn pool_as(&self, user: &str, max_size: usize) -> PgPool {
        let mut config = self.config.clone();
        config.user(user);
        PgPool::new(config, NoTls, max_size)
    }

    /// A plain client on the test database, connecting as `user`.
    pub async fn client_as(&self, user: &str) -> keywheel_postgres::tokio_postgres::Client {
        let mut config = self.config.clone();
        config.user(user);
        let (client, connection) = config.connect(NoTls).await.expect("connect");
        tokio::spawn(connection);
        client
    }

    /// Create login roles with these (unique) names; they are dropped after
    /// the test database, when the returned guard is dropped.
    pub async fn with_roles(self, roles: &[&str]) -> WithRoles {
        for role in roles {
            self.execute(&format!("CREATE ROLE \"{role}\" LOGIN")).await;
        }
        let admin = conn_string(&self.admin, self.admin.get_dbname().unwrap_or("postgres"));
        WithRoles { db: Some(self), roles: roles.iter().map(|r| (*r).to_owned()).collect(), admin }
    }
}

/// A test database and roles created for it: the database is dropped first,
/// then the roles (which may own objects in it).
#[derive(Debug)]
pub struct WithRoles {
    db: Option<TestDb>,
    roles: Vec<String>,
    admin: String,
}

impl WithRoles {
    /// The test database.
    pub fn db(&self) -> &TestDb {
        self.db.as_ref().expect("present until dropped")
    }
}

impl Drop for WithRoles {
    fn drop(&mut self) {
        drop(self.db.take());
        let (admin, roles) = (self.admin.clone(), self.roles.clone());
        block_on_thread(async move {
            let Ok(config) = admin.parse::<Config>() else { return };
            let Ok((client, connection)) = config.connect(NoTls).await else { return };
            let task = tokio::spawn(connection);
            for role in roles {
                let _ = client.batch_execute(&format!("DROP ROLE IF EXISTS \"{role}\"")).await;
            }
            drop(client);
            let _ = task.await;
        });
    }
}

/// A migrated keywheel schema in the test database.
pub async fn migrated(db: &TestDb, pool: &PgPool) -> PgSchema {
    let schema = PgSchema::default();
    keywheel_postgres::migrate(pool, &schema).await.expect("migrate");
    let _ = db;
    schema
}

/// A `Keywheel` on the test database's key store and audit sink (schema
/// `keywheel`, migrated), with a fixed local KEK.
pub async fn keywheel_on(pool: &PgPool, refresh: Duration) -> keywheel_core::Keywheel {
    use std::sync::Arc;
    let schema = PgSchema::default();
    keywheel_postgres::migrate(pool, &schema).await.expect("migrate");
    keywheel_core::Keywheel::builder()
        .store(Arc::new(keywheel_postgres::PgKeyStore::new(pool.clone(), schema.clone())))
        .audit(Arc::new(keywheel_postgres::PgAuditSink::new(pool.clone(), schema)))
        .kek(Arc::new(keywheel_core::LocalKek::from_bytes(&[7; 32])))
        .refresh_interval(refresh)
        .build()
        .expect("keywheel")
}

/// The plaintext the tests store in row `id` (deterministic, so lost writes show).
pub fn plaintext(id: i64, generation: u32) -> Vec<u8> {
    format!("secret of row {id}, written {generation} times").into_bytes()
}

/// The blind index of `users.email` the blind-index test and benchmark use.
pub fn email_index() -> keywheel_core::BlindIndex {
    keywheel_core::BlindIndex::new("users", "email").normalization(keywheel_core::Normalization::TrimLowercase)
}

/// The email stored in row `id` of their `users` table.
pub fn email(id: i64) -> String {
    format!("user{id}@example.org")
}

/// The context of row `id`'s email.
pub fn email_ctx(id: i64) -> keywheel_core::Context {
    keywheel_core::Context::field("users", "email", &id.to_string())
}
