//! The example service against a real Postgres, driven over HTTP: users of
//! two tenants keep being created, read back and found by email while one
//! tenant's keyring is rotated and the master key is rotated, with no failed
//! request; the metrics move by what the rotation did; a graceful shutdown
//! lets an in-flight request finish.

#[path = "../../../crates/keywheel-postgres/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TestDb, XorShift};
use futures::StreamExt as _;
use keywheel::{KeyringId, LocalKek, Policy, Purpose};
use keywheel_example_axum::users::{Found, Tenant, User};
use keywheel_example_axum::{App, AppState, Config, StartError, backend};
use keywheel_postgres::tokio_postgres::config::Host;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const CURRENT_MASTER_KEY: [u8; 32] = [0x11; 32];
const NEXT_MASTER_KEY: [u8; 32] = [0x22; 32];
const ADMIN_TOKEN: &str = "test-admin-token";
const TENANTS: [&str; 2] = ["acme", "globex"];
const SEEDED_PER_TENANT: usize = 150;

/// The test database as a URL (what `DATABASE_URL` holds).
fn database_url(db: &TestDb) -> String {
    let c = &db.config;
    let user = c.get_user().unwrap_or("postgres");
    let password = c.get_password().map(|p| format!(":{}", String::from_utf8_lossy(p))).unwrap_or_default();
    let port = c.get_ports().first().copied().unwrap_or(5432);
    match c.get_hosts().first() {
        Some(Host::Unix(dir)) => {
            format!("postgresql://{user}{password}@localhost:{port}/{}?host={}", db.name, dir.display())
        }
        Some(Host::Tcp(host)) => format!("postgresql://{user}{password}@{host}:{port}/{}", db.name),
        None => format!("postgresql://{user}{password}@127.0.0.1:{port}/{}", db.name),
    }
}

/// The service, started in-process on 127.0.0.1:0.
struct Service {
    base: String,
    http: reqwest::Client,
    state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), StartError>>,
}

impl Service {
    async fn start(db: &TestDb) -> Service {
        let config = Config {
            database_url: database_url(db),
            master_key: Arc::new(LocalKek::from_bytes(&CURRENT_MASTER_KEY)),
            next_master_key: Some(Arc::new(LocalKek::from_bytes(&NEXT_MASTER_KEY))),
            admin_token: Some(ADMIN_TOKEN.into()),
            scheduler_tick: Duration::from_secs(1),
            max_connections: 8,
        };
        let app = App::start(config).await.expect("the service starts");
        let state = app.state().clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(app.serve(listener, async move {
            let _ = rx.await;
        }));
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
        Service { base, http, state, shutdown: Some(tx), server }
    }

    /// A checking client of this service, with no users written yet.
    fn client(&self) -> Client {
        Client {
            http: self.http.clone(),
            base: self.base.clone(),
            written: Arc::default(),
            counter: Arc::new(AtomicU64::new(1)),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn put_tenant(&self, tenant: &str) -> (StatusCode, Tenant) {
        let r = self.http.put(self.url(&format!("/tenants/{tenant}"))).send().await.expect("PUT tenant");
        (r.status(), r.json().await.expect("tenant JSON"))
    }

    async fn admin_post(&self, path: &str) -> (StatusCode, Value) {
        let r = self.http.post(self.url(path)).bearer_auth(ADMIN_TOKEN).send().await.expect("admin POST");
        (r.status(), r.json().await.expect("admin JSON"))
    }

    async fn metrics(&self) -> String {
        let r = self.http.get(self.url("/metrics")).send().await.expect("GET /metrics");
        assert_eq!(r.status(), StatusCode::OK);
        r.text().await.expect("metrics text")
    }

    /// Stop the service and wait for it.
    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.server.await.expect("server task").expect("served and shut down cleanly");
    }
}

/// A user as a client writes it.
#[derive(Clone)]
struct Written {
    id: i64,
    tenant: String,
    name: String,
    email: String,
    api_token: String,
}

impl Written {
    fn matches(&self, u: &User) -> bool {
        (u.id, u.tenant.as_str(), u.name.as_str(), u.email.as_str(), u.api_token.as_str())
            == (self.id, self.tenant.as_str(), self.name.as_str(), self.email.as_str(), self.api_token.as_str())
    }
}

/// A client: creates, reads back and finds users, checking every answer.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
    written: Arc<Mutex<Vec<Written>>>,
    counter: Arc<AtomicU64>,
}

/// What clients did to one tenant, and what went wrong anywhere.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    during_rotation: AtomicU64,
    during_kek_rotation: AtomicU64,
    /// Per tenant: users created, users read back, users found by email.
    created: Mutex<BTreeMap<String, u64>>,
    reads: Mutex<BTreeMap<String, u64>>,
    found: Mutex<BTreeMap<String, u64>>,
    failures: Mutex<Vec<String>>,
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, tenant: &str) {
    *map.lock().expect("tally").entry(tenant.to_owned()).or_default() += 1;
}

impl Client {
    async fn create(&self, tenant: &str) -> Result<Written, String> {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let body = json!({
            "name": format!("User {n}"),
            "email": format!("User.{n}@{tenant}.example"),
            "api_token": format!("tok_{n:08}_{}", common::random_u64()),
        });
        let r = self
            .http
            .post(format!("{}/tenants/{tenant}/users", self.base))
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("create: {e}"))?;
        if r.status() != StatusCode::CREATED {
            return Err(format!("create: {} {}", r.status(), r.text().await.unwrap_or_default()));
        }
        let user: User = r.json().await.map_err(|e| format!("create: {e}"))?;
        let written = Written {
            id: user.id,
            tenant: tenant.to_owned(),
            name: body["name"].as_str().unwrap_or_default().to_owned(),
            email: body["email"].as_str().unwrap_or_default().to_owned(),
            api_token: body["api_token"].as_str().unwrap_or_default().to_owned(),
        };
        if !written.matches(&user) {
            return Err(format!("create answered another user than written: {}", user.id));
        }
        self.written.lock().expect("written").push(written.clone());
        Ok(written)
    }

    async fn read(&self, w: &Written) -> Result<User, String> {
        let r = self
            .http
            .get(format!("{}/tenants/{}/users/{}", self.base, w.tenant, w.id))
            .send()
            .await
            .map_err(|e| format!("read {}: {e}", w.id))?;
        if r.status() != StatusCode::OK {
            return Err(format!("read {}: {} {}", w.id, r.status(), r.text().await.unwrap_or_default()));
        }
        let user: User = r.json().await.map_err(|e| format!("read {}: {e}", w.id))?;
        if !w.matches(&user) {
            return Err(format!("read {}: not what was written", w.id));
        }
        Ok(user)
    }

    /// Find `w` by its email as a user types it (other case, spaces around).
    async fn find(&self, w: &Written) -> Result<(), String> {
        let typed = format!("  {} ", w.email.to_uppercase());
        let r = self
            .http
            .get(format!("{}/tenants/{}/users", self.base, w.tenant))
            .query(&[("email", typed.as_str())])
            .send()
            .await
            .map_err(|e| format!("find {}: {e}", w.id))?;
        if r.status() != StatusCode::OK {
            return Err(format!("find {}: {} {}", w.id, r.status(), r.text().await.unwrap_or_default()));
        }
        let found: Found = r.json().await.map_err(|e| format!("find {}: {e}", w.id))?;
        match found.users.as_slice() {
            [one] if w.matches(one) => Ok(()),
            other => Err(format!("find {}: found {:?}", w.id, other.iter().map(|u| u.id).collect::<Vec<_>>())),
        }
    }

    /// Random operations until `stop`, every answer checked.
    async fn run(self, stop: Arc<AtomicBool>, phases: Arc<[AtomicBool; 2]>, tally: Arc<Tally>) {
        let mut rng = XorShift::seeded();
        while !stop.load(Ordering::SeqCst) {
            let tenant = TENANTS[rng.below(2) as usize];
            let pick = {
                let written = self.written.lock().expect("written");
                let mine: Vec<&Written> = written.iter().filter(|w| w.tenant == tenant).collect();
                mine[rng.below(mine.len() as u64) as usize].clone()
            };
            let (rotating, kek) = (phases[0].load(Ordering::SeqCst), phases[1].load(Ordering::SeqCst));
            let result = match rng.below(10) {
                0..=3 => self.create(tenant).await.map(|_| bump(&tally.created, tenant)),
                4..=7 => self.read(&pick).await.map(|_| bump(&tally.reads, tenant)),
                _ => self.find(&pick).await.map(|_| bump(&tally.found, tenant)),
            };
            tally.requests.fetch_add(1, Ordering::SeqCst);
            // Overlapping the rotation: under way when it started or when it ended.
            if rotating || phases[0].load(Ordering::SeqCst) {
                tally.during_rotation.fetch_add(1, Ordering::SeqCst);
            }
            if kek || phases[1].load(Ordering::SeqCst) {
                tally.during_kek_rotation.fetch_add(1, Ordering::SeqCst);
            }
            if let Err(e) = result {
                tally.failures.lock().expect("failures").push(e);
            }
        }
    }
}

/// The sum of the samples of metric `name` whose labels contain every one of `labels`.
fn metric(text: &str, name: &str, wanted: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = series.split_once('{').unwrap_or((series, ""));
            (n == name && wanted.iter().all(|w| labels.contains(w))).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// A 1 s activation delay for `tenant`'s keyring: the new version is loaded
/// (Pending) by every reader before any value or tag moves to it.
async fn short_activation_delay(state: &AppState, tenant: &str, delay: Duration) {
    let id = KeyringId::new(tenant, Purpose::Database).expect("id");
    let policy = Policy { activation_delay: delay, ..state.keywheel().policy(&id).await.expect("policy") };
    state.keywheel().set_policy(&id, &policy).await.expect("set policy");
}

// Each test has its own tenants: under `cargo test` the tests share the
// process's one metrics recorder, whose series are labelled by keyring.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_read_back_and_are_found_through_a_keyring_rotation_and_a_master_key_rotation() {
    let Some(db) = TestDb::create().await else { return };
    let svc = Service::start(&db).await;
    for tenant in TENANTS {
        let (status, created) = svc.put_tenant(tenant).await;
        assert_eq!((status, created.active_version), (StatusCode::CREATED, Some(1)), "{created:?}");
        let (status, again) = svc.put_tenant(tenant).await;
        assert_eq!((status, again.keyring.as_str()), (StatusCode::OK, format!("{tenant}/database").as_str()));
    }
    short_activation_delay(&svc.state, "acme", Duration::from_secs(1)).await;

    // Seed both tenants over HTTP.
    let client = svc.client();
    let seeds = futures::stream::iter((0..SEEDED_PER_TENANT * 2).map(|i| {
        let client = client.clone();
        async move { client.create(TENANTS[i % 2]).await.expect("seed") }
    }))
    .buffer_unordered(8)
    .collect::<Vec<_>>()
    .await;
    assert_eq!(seeds.len(), SEEDED_PER_TENANT * 2);
    let before = svc.metrics().await;

    // Clients keep going while the keyring and the master key are rotated.
    let stop = Arc::new(AtomicBool::new(false));
    let phases: Arc<[AtomicBool; 2]> = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> =
        (0..4).map(|_| tokio::spawn(client.clone().run(stop.clone(), phases.clone(), tally.clone()))).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let acme_before_rotation = client.written.lock().expect("written").iter().filter(|w| w.tenant == "acme").count();
    phases[0].store(true, Ordering::SeqCst);
    let started = Instant::now();
    let (status, rotation) = svc.admin_post("/admin/tenants/acme/rotate").await;
    phases[0].store(false, Ordering::SeqCst);
    let acme_after_rotation = client.written.lock().expect("written").iter().filter(|w| w.tenant == "acme").count();
    eprintln!("rotation of acme/database in {:?}: {rotation}", started.elapsed());
    assert_eq!(status, StatusCode::OK, "{rotation}");
    assert_eq!(
        (rotation["phase"].as_str(), rotation["from"].as_u64(), rotation["to"].as_u64()),
        (Some("completed"), Some(1), Some(2))
    );
    assert_eq!(rotation["counts"]["failed"], 0, "{rotation}");
    let rewritten = rotation["counts"]["rewritten"].as_u64().expect("rewritten");
    // Two values per row (email, api_token); rows written during the
    // activation delay were on v1 too, later ones on v2 already.
    assert!(
        (2 * acme_before_rotation as u64..=2 * acme_after_rotation as u64).contains(&rewritten),
        "rewritten {rewritten}: acme had {acme_before_rotation} rows before, {acme_after_rotation} after"
    );

    phases[1].store(true, Ordering::SeqCst);
    let (status, kek) = svc.admin_post("/admin/kek/rotate").await;
    phases[1].store(false, Ordering::SeqCst);
    eprintln!("master key rotation: {kek}");
    assert_eq!(status, StatusCode::OK, "{kek}");
    // acme's v1 and v2, globex's v1.
    assert_eq!((kek["keyrings"].as_u64(), kek["keys"].as_u64()), (Some(2), Some(3)), "{kek}");

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.expect("client task");
    }
    let failures = tally.failures.lock().expect("failures").clone();
    let requests = tally.requests.load(Ordering::SeqCst);
    let (during, during_kek) =
        (tally.during_rotation.load(Ordering::SeqCst), tally.during_kek_rotation.load(Ordering::SeqCst));
    eprintln!(
        "{requests} requests, {during} during the keyring rotation, {during_kek} during the master key rotation, {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "{} failed requests, e.g. {:?}", failures.len(), &failures[..failures.len().min(10)]);
    assert!(during > 0 && during_kek > 0, "clients ran during both rotations ({during}, {during_kek})");

    // Every user reads back as written and is found by email; acme's values
    // and tags are all on v2 now, globex's still on v1.
    let written = client.written.lock().expect("written").clone();
    let checks = futures::stream::iter(written.iter().map(|w| {
        let client = client.clone();
        async move {
            let user = client.read(w).await?;
            client.find(w).await?;
            Ok::<_, String>((w.tenant.clone(), user.key_versions))
        }
    }))
    .buffer_unordered(8)
    .collect::<Vec<_>>()
    .await;
    for check in checks {
        let (tenant, v) = check.expect("reads back as written, found by email");
        let want = if tenant == "acme" { 2 } else { 1 };
        assert_eq!((v.email, v.email_bidx, v.api_token), (want, want, want), "{tenant}");
    }
    let acme_rows = written.iter().filter(|w| w.tenant == "acme").count();
    eprintln!("{} users read back and found after the rotations ({acme_rows} of acme)", written.len());

    // The metrics moved by what happened to acme/database.
    let after = svc.metrics().await;
    let acme = "keyring=\"acme/database\"";
    let delta = |name: &str| metric(&after, name, &[acme]) - metric(&before, name, &[acme]);
    let created = *tally.created.lock().expect("tally").get("acme").unwrap_or(&0) as f64;
    let reads = *tally.reads.lock().expect("tally").get("acme").unwrap_or(&0) as f64;
    let found = *tally.found.lock().expect("tally").get("acme").unwrap_or(&0) as f64;
    let (rewritten_delta, enc_delta, dec_delta) = (
        delta("keywheel_rotation_values_rewritten_total"),
        delta("keywheel_encryptions_total"),
        delta("keywheel_decryptions_total"),
    );
    eprintln!(
        "metrics of acme/database: rewritten +{rewritten_delta}, encryptions +{enc_delta}, decryptions +{dec_delta} \
         ({created} created, {reads} read, {found} found by clients; {acme_rows} read and found afterwards)"
    );
    assert_eq!(rewritten_delta, rewritten as f64, "the rewritten counter moved by the rotation's count");
    // Clients never update a row, so the rotation skipped nothing: each
    // creation encrypted two values and the rotation re-encrypted each value
    // it rewrote; each read and each user found decrypted two values, and
    // the rotation each value it rewrote.
    assert_eq!(rotation["counts"]["skipped"], 0, "{rotation}");
    assert_eq!(enc_delta, rewritten as f64 + 2.0 * created, "encryptions of acme/database");
    assert_eq!(dec_delta, rewritten as f64 + 2.0 * (reads + found + 2.0 * acme_rows as f64), "decryptions");
    assert!(metric(&after, "keywheel_rotation_batch_duration_seconds_count", &[acme]) > 0.0, "batches timed");
    assert!(metric(&after, "keywheel_census_values", &[acme, "version=\"2\""]) > 0.0, "census gauge of v2");

    // The scheduler's status shows the rotation.
    let status: Value =
        svc.http.get(svc.url("/admin/scheduler?census=true")).send().await.expect("status").json().await.expect("json");
    let rings = status["keyrings"].as_array().expect("keyrings");
    let acme_status = rings.iter().find(|k| k["keyring"] == "acme/database").expect("acme in the status");
    assert_eq!(acme_status["current_version"], 2, "{acme_status}");
    assert_eq!(acme_status["census"]["1"].as_u64().unwrap_or(0), 0, "nothing left on v1: {acme_status}");
    assert_eq!(rings.len(), 2, "{status}");

    // The next master key alone now opens every keyring.
    let pool = sqlx::PgPool::connect(&database_url(&db)).await.expect("a pool of its own");
    let next_only = backend::keywheel_backend(&pool, Arc::new(LocalKek::from_bytes(&NEXT_MASTER_KEY)), "test")
        .await
        .expect("backend on the next master key");
    for tenant in TENANTS {
        let id = KeyringId::new(tenant, Purpose::Database).expect("id");
        let ring = next_only.keywheel.keyring(&id).await.expect("unwrapped by the next master key alone");
        assert_eq!(ring.active_version().map(|v| v.get()), Some(if tenant == "acme" { 2 } else { 1 }));
    }
    next_only.stop();
    pool.close().await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_typed_json_without_values() {
    let Some(db) = TestDb::create().await else { return };
    let svc = Service::start(&db).await;
    svc.put_tenant("hooli").await;
    svc.put_tenant("umbrella").await;
    let client = svc.client();
    let user = client.create("hooli").await.expect("create");
    let get = |path: String| {
        let http = svc.http.clone();
        async move {
            let r = http.get(path).send().await.expect("GET");
            (r.status(), r.json::<Value>().await.expect("a JSON error body"))
        }
    };
    let kind = |v: &Value| v["error"].as_str().unwrap_or_default().to_owned();

    let (s, b) = get(svc.url("/tenants/initech/users/1")).await;
    assert_eq!((s, kind(&b)), (StatusCode::NOT_FOUND, "user_not_found".into()), "{b}");
    let (s, b) = get(svc.url("/tenants/initech/users?email=a@b.c")).await;
    assert_eq!((s, kind(&b)), (StatusCode::NOT_FOUND, "tenant_not_found".into()), "{b}");
    // Another tenant does not see hooli's user.
    let (s, b) = get(svc.url(&format!("/tenants/umbrella/users/{}", user.id))).await;
    assert_eq!((s, kind(&b)), (StatusCode::NOT_FOUND, "user_not_found".into()), "{b}");
    let (s, b) = get(svc.url(&format!("/tenants/umbrella/users?email={}", user.email))).await;
    assert_eq!((s, b["users"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)), "{b}");
    let (s, b) = get(svc.url("/tenants/hooli/users")).await;
    assert_eq!((s, kind(&b)), (StatusCode::BAD_REQUEST, "invalid_input".into()), "{b}");
    let (s, b) = get(svc.url("/tenants/hooli/users/not-a-number")).await;
    assert_eq!((s, kind(&b)), (StatusCode::BAD_REQUEST, "invalid_input".into()), "{b}");
    let (s, b) = get(svc.url("/admin/scheduler?census=maybe")).await;
    assert_eq!((s, kind(&b)), (StatusCode::BAD_REQUEST, "invalid_input".into()), "{b}");
    let (s, b) = get(svc.url("/no/such/endpoint")).await;
    assert_eq!((s, kind(&b)), (StatusCode::NOT_FOUND, "not_found".into()), "{b}");
    let r = svc.http.delete(svc.url("/tenants/hooli")).send().await.expect("DELETE");
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(kind(&r.json().await.expect("json")), "method_not_allowed");

    // A bad body (a field missing; a malformed email) is refused without echoing it.
    let secret = "not-an-email-but-secret-4711";
    for body in [json!({"name": "x", "email": secret}), json!({"name": "x", "email": secret, "api_token": "t"})] {
        let r = svc.http.post(svc.url("/tenants/hooli/users")).json(&body).send().await.expect("POST");
        let (s, text) = (r.status(), r.text().await.expect("body"));
        assert_eq!(s, StatusCode::BAD_REQUEST, "{text}");
        assert!(text.contains("\"invalid_input\"") && !text.contains(secret), "{text}");
    }
    let r = svc.http.put(svc.url("/tenants/a%2Fb")).send().await.expect("PUT");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(kind(&r.json().await.expect("json")), "invalid_tenant");

    // Admin endpoints want the token.
    let r = svc.http.post(svc.url("/admin/tenants/hooli/rotate")).send().await.expect("POST");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = svc.http.post(svc.url("/admin/kek/rotate")).bearer_auth("wrong").send().await.expect("POST");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(kind(&r.json().await.expect("json")), "unauthorized");
    let (s, b) = svc.admin_post("/admin/scheduler/pause").await;
    assert_eq!((s, &b["scheduler_paused"]), (StatusCode::OK, &json!(true)), "{b}");
    let (s, b) = svc.admin_post("/admin/scheduler/resume").await;
    assert_eq!((s, &b["scheduler_paused"]), (StatusCode::OK, &json!(false)), "{b}");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_an_in_flight_request_finish() {
    let Some(db) = TestDb::create().await else { return };
    let svc = Service::start(&db).await;
    svc.put_tenant("wayne").await;
    let client = svc.client();
    for _ in 0..20 {
        client.create("wayne").await.expect("create");
    }
    // The rotation waits 2 s for its activation delay: in flight meanwhile.
    short_activation_delay(&svc.state, "wayne", Duration::from_secs(2)).await;
    let rotate = {
        let (http, url) = (svc.http.clone(), svc.url("/admin/tenants/wayne/rotate"));
        tokio::spawn(async move {
            let r = http.post(url).bearer_auth(ADMIN_TOKEN).send().await.expect("the in-flight request is answered");
            (r.status(), r.json::<Value>().await.expect("report"), Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!rotate.is_finished(), "the rotation is still in flight");
    let (base, http) = (svc.base.clone(), svc.http.clone());
    let signalled = Instant::now();
    let stopping = tokio::spawn(svc.stop());
    let (status, report, answered) = rotate.await.expect("rotate task");
    assert!(answered > signalled, "answered after the shutdown signal");
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!((report["phase"].as_str(), report["counts"]["rewritten"].as_u64()), (Some("completed"), Some(40)));
    tokio::time::timeout(Duration::from_secs(30), stopping)
        .await
        .expect("the service stops once the request is answered")
        .expect("stop task");
    let refused = http.get(format!("{base}/healthz")).send().await;
    assert!(refused.is_err(), "no new connection after shutdown: {refused:?}");
}
