//! Blind indexes on a real table: lookups by email (`WHERE email_bidx =
//! ANY($1)`) keep finding their row throughout a rotation and after it; the
//! rotation rewrites every tag (filling empty ones, fixing stale ones beside
//! values already on the new version), and the old version can then be retired.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{TestDb, XorShift, email, email_ctx as ctx, email_index};
use keywheel_core::{
    Algorithm, Form, JobPhase, KeyState, KeyVersion, Keyring, KeyringId, Keywheel, Policy, Purpose, RotateOptions,
    Rotator, version_of,
};
use keywheel_postgres::{IndexParam, PgPool, PgRecordSource, PgSchema, TableSpec, spawn_listener};

const ROWS: i64 = 100_000;

/// Rows without a tag (written before the index existed): every 97th.
fn untagged(id: i64) -> bool {
    id % 97 == 0
}

fn v(n: u32) -> KeyVersion {
    KeyVersion::new(n).expect("nonzero")
}

/// `users(id, tenant, email, email_bidx)` with `rows` rows encrypted and
/// tagged under `ring`'s Active version (some untagged), and a btree on the tags.
async fn seed(db: &TestDb, ring: &Keyring, tenant: &str, rows: i64) {
    db.execute(
        "CREATE TABLE public.users (id bigint PRIMARY KEY, tenant text NOT NULL, email bytea, email_bidx bytea);
         CREATE INDEX users_email_bidx ON public.users (email_bidx)",
    )
    .await;
    let client = db.client().await;
    let index = email_index();
    for chunk in (1..=rows).collect::<Vec<_>>().chunks(5000) {
        let ids: Vec<i64> = chunk.to_vec();
        let emails: Vec<Vec<u8>> =
            ids.iter().map(|n| ring.encrypt(email(*n).as_bytes(), &ctx(*n)).expect("encrypt")).collect();
        let tags: Vec<Option<Vec<u8>>> = ids
            .iter()
            .map(|n| (!untagged(*n)).then(|| ring.blind_index(email(*n).as_bytes(), &index).expect("tag")))
            .collect();
        client
            .execute(
                "INSERT INTO public.users (id, tenant, email, email_bidx) \
                 SELECT i, $4, e, t FROM UNNEST($1::int8[], $2::bytea[], $3::bytea[]) AS u(i, e, t)",
                &[&ids, &emails, &tags, &tenant],
            )
            .await
            .expect("seed");
    }
    client.execute("ANALYZE public.users", &[]).await.expect("analyze");
}

fn users_spec() -> TableSpec {
    TableSpec::new("public", "users")
        .keyring_from_column("tenant", Purpose::Database)
        .column("email", Form::Binary)
        .index("email", "email_bidx", Form::Binary, email_index())
}

/// One lookup as the application makes it: the terms from its current
/// keyring snapshot, `= ANY($1)` on the index, the email decrypted. Returns
/// the version of the matched tag; panics unless exactly row `id` is found.
async fn lookup(
    client: &keywheel_postgres::tokio_postgres::Client,
    kw: &Keywheel,
    keyring: &KeyringId,
    id: i64,
) -> u32 {
    let ring = kw.keyring(keyring).await.expect("keyring");
    // Typed as users type it: other case, spaces around.
    let typed = format!("  {} ", email(id).to_uppercase());
    let terms = IndexParam::new(&ring.index_terms(typed.as_bytes(), &email_index()).expect("terms"), Form::Binary);
    let rows = client
        .query("SELECT id, email, email_bidx FROM public.users WHERE email_bidx = ANY($1)", &[&terms])
        .await
        .expect("lookup");
    let found: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(found, [id], "the lookup of row {id} ({terms:?}) must find exactly its row");
    let stored: Vec<u8> = rows[0].get(1);
    let plain = kw.decrypt(keyring, &stored, &ctx(id)).await.expect("decrypt the found email");
    assert_eq!(&plain[..], email(id).as_bytes(), "row {id}: the found email is the one looked up");
    version_of(rows[0].get::<_, &[u8]>(2)).expect("a valid tag").get()
}

/// Lookups of random tagged rows until `stop`, as fast as one connection
/// goes; counts them, and those made while `rotating`, per matched tag version.
#[derive(Default)]
struct Lookups {
    total: AtomicU64,
    during_rotation: AtomicU64,
    on_old_tag_during_rotation: AtomicU64,
    on_new_tag_during_rotation: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lookups_find_their_row_throughout_a_rotation_and_the_old_version_retires() {
    let Some(db) = TestDb::create().await else { return };
    let pool = db.pool(8);
    let kw = common::keywheel_on(&pool, Duration::from_secs(3600)).await;
    let id = KeyringId::new("acme", Purpose::Database).expect("id");
    kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("keyring");
    // The new version is Pending for a second before it is activated: every
    // instance (kept fresh by its listener) then looks up under both versions
    // before any tag moves. No grace period: v1 may retire once unused.
    let policy = Policy {
        activation_delay: Duration::from_secs(1),
        grace_period: Duration::ZERO,
        ..kw.policy(&id).await.expect("policy")
    };
    kw.set_policy(&id, &policy).await.expect("set policy");
    let ring_v1 = kw.keyring(&id).await.expect("v1 snapshot");
    let started = Instant::now();
    seed(&db, &ring_v1, id.tenant(), ROWS).await;
    eprintln!("seeded {ROWS} rows in {:?}", started.elapsed());

    // The application: its own Keywheel on its own pool, refreshed by a listener.
    let app_pool: PgPool = db.pool(4);
    let app_kw = common::keywheel_on(&app_pool, Duration::from_secs(3600)).await;
    let listener = spawn_listener(&app_pool, &PgSchema::default(), app_kw.clone()).await.expect("listener");
    let stop = Arc::new(AtomicBool::new(false));
    let rotating = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Lookups::default());
    let searcher = {
        let (client, kw, id) = (db.client().await, app_kw.clone(), id.clone());
        let (stop, rotating, counts) = (Arc::clone(&stop), Arc::clone(&rotating), Arc::clone(&counts));
        tokio::spawn(async move {
            let mut rng = XorShift::seeded();
            while !stop.load(Ordering::SeqCst) {
                let row = 1 + rng.below(ROWS as u64) as i64;
                if untagged(row) {
                    continue;
                }
                let during = rotating.load(Ordering::SeqCst);
                let tag_version = lookup(&client, &kw, &id, row).await;
                counts.total.fetch_add(1, Ordering::SeqCst);
                if during && rotating.load(Ordering::SeqCst) {
                    counts.during_rotation.fetch_add(1, Ordering::SeqCst);
                    match tag_version {
                        1 => counts.on_old_tag_during_rotation.fetch_add(1, Ordering::SeqCst),
                        _ => counts.on_new_tag_during_rotation.fetch_add(1, Ordering::SeqCst),
                    };
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(counts.total.load(Ordering::SeqCst) > 0, "lookups run before the rotation");

    let source = Arc::new(PgRecordSource::open(pool.clone(), users_spec()).await.expect("open users"));
    let rotator = Rotator::new(kw.clone()).expect("rotator").source(source.clone());
    rotating.store(true, Ordering::SeqCst);
    let rotation = {
        let (rotator, id, policy) = (rotator.clone(), id.clone(), policy.clone());
        tokio::spawn(async move { rotator.rotate(&id, &policy, &RotateOptions::default()).await })
    };
    // As soon as v2 is Active, an instance with a stale snapshot writes rows
    // whose value is on v2 but whose tag is on v1, and rows without a tag, at
    // the end of the table: the rotation reaches them last.
    let client = db.client().await;
    while app_kw.keyring(&id).await.expect("keyring").active_version() != Some(v(2)) {
        assert!(!rotation.is_finished(), "the rotation ended before v2 was seen Active");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let late: Vec<i64> = (ROWS + 1..=ROWS + 20).collect();
    for n in &late {
        let value = app_kw.encrypt(&id, email(*n).as_bytes(), &ctx(*n)).await.expect("encrypt on v2");
        let stale_tag = (n % 2 == 0).then(|| ring_v1.blind_index(email(*n).as_bytes(), &email_index()).expect("tag"));
        client
            .execute(
                "INSERT INTO public.users (id, tenant, email, email_bidx) VALUES ($1, $2, $3, $4)",
                &[n, &id.tenant(), &value, &stale_tag],
            )
            .await
            .expect("insert");
    }
    let report = rotation.await.expect("rotation task").expect("rotate");
    rotating.store(false, Ordering::SeqCst);
    assert_eq!(report.phase, JobPhase::Completed, "{report:?}");
    assert_eq!(report.counts.failed, 0, "{report:?}");
    let during = counts.during_rotation.load(Ordering::SeqCst);
    eprintln!(
        "rotation {report:?}; lookups during it: {during} ({} matched a v1 tag, {} a v2 tag)",
        counts.on_old_tag_during_rotation.load(Ordering::SeqCst),
        counts.on_new_tag_during_rotation.load(Ordering::SeqCst)
    );
    assert!(during > 0, "lookups ran during the rotation");

    // Every tag is on v2: the untagged rows got one, the stale ones were fixed.
    let total = (ROWS + late.len() as i64) as u64;
    let census = rotator.census(Some(&id)).await.expect("census");
    assert_eq!((census.index_tag_count(&id, v(1)), census.index_tag_count(&id, v(2))), (0, total), "{census:?}");
    assert_eq!(census.count(&id, v(2)), 2 * total, "values and tags, all on v2: {census:?}");
    let verify = rotator.verify(&id).await.expect("verify");
    assert_eq!((verify.on_older, verify.not_on_active), (0, 0), "{verify:?}");
    let sql = "SELECT count(*) FROM public.users WHERE email_bidx IS NULL OR substring(email_bidx FROM 5 FOR 4) <> '\\x00000002'::bytea";
    assert_eq!(client.query_one(sql, &[]).await.expect("count").get::<_, i64>(0), 0, "no tag left off v2");
    for n in late.iter().copied().chain((1..=ROWS).filter(|n| untagged(*n)).take(20)) {
        assert_eq!(lookup(&client, &app_kw, &id, n).await, 2, "row {n}: an empty or stale tag was rewritten");
    }

    // v1 is unused: it retires (Disabled, its material destroyed after the quarantine).
    let record = rotator.retire(&id, v(1), &policy, None).await.expect("retire v1");
    assert_eq!(record.version(v(1)).expect("v1").state, KeyState::Disabled);
    assert!(record.version(v(1)).expect("v1").destroy_after.is_some(), "destroyed after the quarantine");
    // Lookups go on after the rotation and the retirement (terms under v2 alone).
    let after = counts.total.load(Ordering::SeqCst);
    let started = Instant::now();
    while counts.total.load(Ordering::SeqCst) < after + 50 {
        assert!(!searcher.is_finished(), "the lookup task failed");
        assert!(started.elapsed() < Duration::from_secs(30), "lookups stalled after the rotation");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ring = app_kw.keyring(&id).await.expect("keyring");
    assert_eq!(ring.index_terms(b"x", &email_index()).expect("terms").len(), 1, "a retired version has no terms");
    stop.store(true, Ordering::SeqCst);
    searcher.await.expect("every lookup found exactly its row");
    listener.abort();
}
