//! [`SqlKeyStore`]: keyrings, versions, leases, jobs and policies in Postgres.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use keywheel_core::{
    Algorithm, Error, KeyOrigin, KeyState, KeyStore, KeyVersion, KeyringChange, KeyringId, KeyringRecord, Lease,
    Policy, RecordSeal, Result, RotationJob, Timestamp, VersionRecord, WrappedKey, async_trait, check_fence,
    grant_lease,
};

use crate::PgSchema;
use crate::driver::{Driver, Param, Row, STORE, Transaction, invalid, on};

/// A [`KeyStore`] in Postgres: the full contract, over a [`Driver`]'s pool
/// (keywheel-postgres' `PgKeyStore`, keywheel-sqlx's `SqlxKeyStore`), in the
/// tables [`migrate`](crate::migrate) creates in a [`PgSchema`].
///
/// * **Keyrings** are a row in `keyrings` (with the generation and the
///   record's seal, `seal_key_id` and `seal_mac`, NULL until sealed) plus one
///   row per version in `key_versions` (the keyring row also holds the
///   erasure time, `erased_at_ms`, NULL unless erased): state, algorithm, origin, the
///   compromised flag, the KEK-wrapped material (`kek_id`, `key_check`,
///   `wrapped`; all NULL once retired) and the whole version record as JSON
///   (`meta`), so fields added to [`VersionRecord`] later are kept too. The
///   typed columns are what a load returns for the fields they hold (the copy
///   in `meta` is ignored), so what an operator sees in SQL is what keywheel
///   uses — and what the seal is checked against.
/// * **[`update_keyring`](KeyStore::update_keyring)** is one transaction: the
///   keyring row is locked (`SELECT … FOR UPDATE`), the generation compared,
///   the changes applied with [`KeyringRecord::apply`], the changed versions and
///   the new generation written, and — when a version was added or changed
///   state, material or flag — a `NOTIFY` sent on
///   [`PgSchema::channel`] with the keyring's canonical id, delivered at commit
///   (see [`spawn_listener`](crate::spawn_listener)). `create_keyring` notifies too.
/// * **Leases** live in `leases`, one row per keyring that also keeps the last
///   token granted (after release and expiry), so tokens only grow. An expired
///   lease of a crashed process is taken over by the next `acquire_lease`.
/// * **Jobs** (`jobs`) and **policies** (`policies`) are stored as JSON;
///   [`save_job`](KeyStore::save_job) is one statement that writes only while
///   the lease row still carries the caller's token (locked `FOR SHARE`).
#[derive(Clone)]
pub struct SqlKeyStore<D> {
    pool: D,
    schema: PgSchema,
    sql: Sql,
}

impl<D> fmt::Debug for SqlKeyStore<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlKeyStore").field("schema", &self.schema.name()).finish_non_exhaustive()
    }
}

/// The statements, with the schema filled in once.
#[derive(Clone)]
struct Sql {
    insert_keyring: String,
    lock_keyring: String,
    load_versions: String,
    load_keyring: String,
    list_keyrings: String,
    upsert_version: String,
    set_generation: String,
    ensure_lease_row: String,
    lock_lease: String,
    grant_lease: String,
    renew_lease: String,
    release_lease: String,
    load_lease: String,
    save_job: String,
    load_job: String,
    list_jobs: String,
    save_policy: String,
    load_policy: String,
}

const VERSION_COLUMNS: &str =
    "v.version, v.meta::text, v.kek_id, v.key_check, v.wrapped, v.state, v.algorithm, v.origin, v.compromised";

impl Sql {
    fn new(s: &PgSchema) -> Self {
        let (keyrings, versions, leases, jobs, policies) =
            (s.table("keyrings"), s.table("key_versions"), s.table("leases"), s.table("jobs"), s.table("policies"));
        Sql {
            insert_keyring: format!(
                "INSERT INTO {keyrings} (id, tenant, purpose, generation, algorithm, created_at_ms, seal_key_id, \
                 seal_mac, erased_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING"
            ),
            lock_keyring: format!(
                "SELECT generation, algorithm, created_at_ms, seal_key_id, seal_mac, erased_at_ms FROM {keyrings} \
                 WHERE id = $1 FOR UPDATE"
            ),
            load_versions: format!(
                "SELECT {VERSION_COLUMNS} FROM {versions} AS v WHERE v.keyring_id = $1 ORDER BY v.version"
            ),
            // One statement, so one snapshot: the keyring and its versions of one generation.
            load_keyring: format!(
                "SELECT k.generation, k.algorithm, k.created_at_ms, k.seal_key_id, k.seal_mac, k.erased_at_ms, \
                 {VERSION_COLUMNS} \
                 FROM {keyrings} AS k \
                 LEFT JOIN {versions} AS v ON v.keyring_id = k.id WHERE k.id = $1 ORDER BY v.version"
            ),
            list_keyrings: format!("SELECT id FROM {keyrings}"),
            upsert_version: format!(
                "INSERT INTO {versions} AS v (keyring_id, version, state, algorithm, origin, compromised, \
                 kek_id, key_check, wrapped, meta) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text::json) \
                 ON CONFLICT (keyring_id, version) DO UPDATE SET state = EXCLUDED.state, \
                 algorithm = EXCLUDED.algorithm, origin = EXCLUDED.origin, compromised = EXCLUDED.compromised, \
                 kek_id = EXCLUDED.kek_id, key_check = EXCLUDED.key_check, wrapped = EXCLUDED.wrapped, \
                 meta = EXCLUDED.meta"
            ),
            set_generation: format!(
                "UPDATE {keyrings} SET generation = $2, seal_key_id = $3, seal_mac = $4, erased_at_ms = $5, \
                 updated_at = now() WHERE id = $1"
            ),
            ensure_lease_row: format!(
                "INSERT INTO {leases} (keyring_id, token) VALUES ($1, 0) ON CONFLICT (keyring_id) DO NOTHING"
            ),
            lock_lease: format!("SELECT holder, token, expires_at_ms FROM {leases} WHERE keyring_id = $1 FOR UPDATE"),
            grant_lease: format!(
                "UPDATE {leases} SET holder = $2, token = $3, expires_at_ms = $4 WHERE keyring_id = $1"
            ),
            renew_lease: format!(
                "UPDATE {leases} SET expires_at_ms = $4 WHERE keyring_id = $1 AND token = $2 AND holder = $3"
            ),
            release_lease: format!(
                "UPDATE {leases} SET holder = NULL, expires_at_ms = NULL \
                 WHERE keyring_id = $1 AND token = $2 AND holder IS NOT NULL"
            ),
            load_lease: format!(
                "SELECT holder, token, expires_at_ms FROM {leases} WHERE keyring_id = $1 AND holder IS NOT NULL"
            ),
            save_job: format!(
                "WITH fence AS (SELECT 1 FROM {leases} WHERE keyring_id = $1 AND token = $2 AND holder IS NOT NULL \
                 FOR SHARE) \
                 INSERT INTO {jobs} (id, keyring_id, started_at_ms, phase, job) \
                 SELECT $3, $1, $4, $5, $6::text::json FROM fence \
                 ON CONFLICT (id) DO UPDATE SET keyring_id = EXCLUDED.keyring_id, \
                 started_at_ms = EXCLUDED.started_at_ms, phase = EXCLUDED.phase, job = EXCLUDED.job, \
                 updated_at = now()"
            ),
            load_job: format!("SELECT job::text FROM {jobs} WHERE id = $1"),
            list_jobs: format!("SELECT job::text FROM {jobs} WHERE keyring_id = $1"),
            save_policy: format!(
                "INSERT INTO {policies} (keyring_id, policy) VALUES ($1, $2::text::json) ON CONFLICT (keyring_id) \
                 DO UPDATE SET policy = EXCLUDED.policy, updated_at = now()"
            ),
            load_policy: format!("SELECT policy::text FROM {policies} WHERE keyring_id = $1"),
        }
    }
}

fn to_json<T: serde::Serialize>(value: &T, what: &str) -> Result<String> {
    serde_json::to_string(value).map_err(|e| invalid(STORE, format!("cannot encode {what}: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| invalid(STORE, format!("stored {what} does not decode: {e}")))
}

/// A serde enum's string form (`"generated"`, …).
fn serde_name<T: serde::Serialize>(value: &T) -> Result<String> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => Ok(s),
        _ => Err(invalid(STORE, "unexpected serde form of an enum")),
    }
}

fn generation_to_sql(g: u64) -> Result<i64> {
    i64::try_from(g).map_err(|_| Error::InvalidArgument(format!("generation {g} does not fit in a bigint")))
}

fn version_to_sql(v: KeyVersion) -> Result<i32> {
    i32::try_from(v.get()).map_err(|_| Error::InvalidArgument(format!("{v} does not fit in an integer column")))
}

fn millis(t: Timestamp) -> i64 {
    t.as_millis()
}

/// A serde enum from its string form (the inverse of [`serde_name`]).
fn from_serde_name<T: serde::de::DeserializeOwned>(name: &str, what: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(name.to_owned()))
        .map_err(|e| invalid(STORE, format!("stored {what} does not decode: {e}")))
}

/// The version record from `meta`, with the typed columns (state, algorithm,
/// origin, compromised flag, material) in place of their copies in `meta`,
/// starting at column `at`.
fn version_from_row(row: &Row, at: usize) -> Result<VersionRecord> {
    let mut record: VersionRecord = from_json(row.text(at + 1)?, "key version")?;
    let stored_version = row.int(at)?;
    if i64::from(record.version.get()) != stored_version {
        return Err(invalid(
            STORE,
            format!("key_versions row {stored_version} holds the record of {}", record.version),
        ));
    }
    let (kek_id, key_check, wrapped) = (row.opt_text(at + 2)?, row.opt_text(at + 3)?, row.opt_bytes(at + 4)?);
    record.wrapped = match (kek_id, key_check, wrapped) {
        (Some(kek_id), Some(key_check), Some(ciphertext)) => Some(WrappedKey {
            kek_id: kek_id.to_owned(),
            key_check: key_check.to_owned(),
            ciphertext: ciphertext.to_vec(),
        }),
        (None, None, None) => None,
        _ => return Err(invalid(STORE, format!("key_versions row {stored_version} has partial key material"))),
    };
    record.state = from_serde_name::<KeyState>(row.text(at + 5)?, "key state")?;
    let algorithm = row.text(at + 6)?;
    record.algorithm = Algorithm::from_str(algorithm).map_err(|_| {
        invalid(STORE, format!("key_versions row {stored_version} has unknown algorithm {algorithm:?}"))
    })?;
    record.origin = from_serde_name::<KeyOrigin>(row.text(at + 7)?, "key origin")?;
    record.compromised = row.bool(at + 8)?;
    Ok(record)
}

/// Whether anything a reader's snapshot depends on changed (versions added,
/// states, material, flags), as opposed to bookkeeping only.
fn key_changed(before: &KeyringRecord, after: &KeyringRecord) -> bool {
    before.versions.len() != after.versions.len()
        || before.algorithm != after.algorithm
        || before.versions.iter().zip(&after.versions).any(|(a, b)| {
            a.state != b.state || a.wrapped != b.wrapped || a.compromised != b.compromised || a.algorithm != b.algorithm
        })
}

impl<D: Driver> SqlKeyStore<D> {
    /// A store in `schema` (run [`migrate`](crate::migrate) once first).
    pub fn new(pool: impl Into<D>, schema: PgSchema) -> Self {
        let sql = Sql::new(&schema);
        SqlKeyStore { pool: pool.into(), schema, sql }
    }

    /// The schema it uses.
    pub fn schema(&self) -> &PgSchema {
        &self.schema
    }

    /// The pool it uses.
    pub fn pool(&self) -> &D {
        &self.pool
    }

    /// One statement on its own (autocommit): its rows; errors name `what`.
    async fn query(&self, what: &'static str, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>> {
        self.pool.query(sql, params).await.map_err(on(STORE, what))
    }

    /// One statement on its own (autocommit): the rows it affected.
    async fn execute(&self, what: &'static str, sql: &str, params: &[Param<'_>]) -> Result<u64> {
        self.pool.execute(sql, params).await.map_err(on(STORE, what))
    }

    async fn write_version(&self, tx: &mut dyn Transaction, id: &str, v: &VersionRecord) -> Result<()> {
        let meta = to_json(&VersionRecord { wrapped: None, ..v.clone() }, "key version")?;
        let (kek_id, key_check, wrapped) = match &v.wrapped {
            Some(w) => (Some(w.kek_id.as_str()), Some(w.key_check.as_str()), Some(w.ciphertext.as_slice())),
            None => (None, None, None),
        };
        let origin = serde_name(&v.origin)?;
        tx.execute(
            &self.sql.upsert_version,
            &[
                id.into(),
                version_to_sql(v.version)?.into(),
                v.state.as_str().into(),
                v.algorithm.name().into(),
                (&origin).into(),
                v.compromised.into(),
                kek_id.into(),
                key_check.into(),
                Param::Bytea(wrapped),
                (&meta).into(),
            ],
        )
        .await
        .map_err(on(STORE, "write key version"))?;
        Ok(())
    }

    /// Write the versions of `after` that differ from `before`; versions that stop
    /// being Active first, so the one-Active index never sees two.
    async fn write_versions(
        &self,
        tx: &mut dyn Transaction,
        id: &str,
        before: &[VersionRecord],
        after: &[VersionRecord],
    ) -> Result<()> {
        let changed: Vec<&VersionRecord> =
            after.iter().enumerate().filter(|(i, v)| before.get(*i) != Some(*v)).map(|(_, v)| v).collect();
        for v in changed.iter().filter(|v| v.state != KeyState::Active) {
            self.write_version(tx, id, v).await?;
        }
        for v in changed.iter().filter(|v| v.state == KeyState::Active) {
            self.write_version(tx, id, v).await?;
        }
        Ok(())
    }

    async fn notify(&self, tx: &mut dyn Transaction, id: &str) -> Result<()> {
        tx.execute("SELECT pg_notify($1, $2)", &[(&self.schema.channel()).into(), id.into()])
            .await
            .map_err(on(STORE, "notify keyring change"))?;
        Ok(())
    }
}

/// The keyring row's fields, from column 0: generation, algorithm,
/// created_at_ms, seal_key_id, seal_mac, erased_at_ms.
fn keyring_header(id: &KeyringId, row: &Row) -> Result<KeyringRecord> {
    let generation = row.int(0)?;
    let algorithm = row.text(1)?;
    let created_at_ms = row.int(2)?;
    let seal_key_id = row.opt_text(3)?.map(str::to_owned);
    let seal_mac = row.opt_text(4)?.map(str::to_owned);
    let erased_at_ms = row.opt_int(5)?;
    let algorithm = Algorithm::from_str(algorithm)
        .map_err(|_| invalid(STORE, format!("keyring {id} has unknown algorithm {algorithm:?}")))?;
    let mut record = KeyringRecord::new(id.clone(), algorithm, Timestamp::from_millis(created_at_ms));
    record.generation =
        u64::try_from(generation).map_err(|_| invalid(STORE, format!("keyring {id} has negative generation")))?;
    record.seal = match (seal_key_id, seal_mac) {
        (Some(key_id), Some(mac)) => Some(RecordSeal { key_id, mac }),
        (None, None) => None,
        _ => return Err(invalid(STORE, format!("keyring {id} has a partial seal"))),
    };
    record.erased_at = erased_at_ms.map(Timestamp::from_millis);
    Ok(record)
}

#[async_trait]
impl<D: Driver> KeyStore for SqlKeyStore<D> {
    async fn create_keyring(&self, record: &KeyringRecord) -> Result<()> {
        record.validate()?;
        let id = record.id.canonical();
        let mut tx = self.pool.begin().await.map_err(on(STORE, "begin"))?;
        let inserted = tx
            .execute(
                &self.sql.insert_keyring,
                &[
                    (&id).into(),
                    record.id.tenant().into(),
                    record.id.purpose().as_str().into(),
                    generation_to_sql(record.generation)?.into(),
                    record.algorithm.name().into(),
                    millis(record.created_at).into(),
                    record.seal.as_ref().map(|s| s.key_id.as_str()).into(),
                    record.seal.as_ref().map(|s| s.mac.as_str()).into(),
                    record.erased_at.map(millis).into(),
                ],
            )
            .await
            .map_err(on(STORE, "create keyring"))?;
        if inserted == 0 {
            return Err(Error::KeyringExists(record.id.clone()));
        }
        self.write_versions(tx.as_mut(), &id, &[], &record.versions).await?;
        self.notify(tx.as_mut(), &id).await?;
        tx.commit().await.map_err(on(STORE, "commit create keyring"))
    }

    async fn load_keyring(&self, id: &KeyringId) -> Result<Option<KeyringRecord>> {
        let rows = self.query("load keyring", &self.sql.load_keyring, &[(&id.canonical()).into()]).await?;
        let Some(first) = rows.first() else { return Ok(None) };
        let mut record = keyring_header(id, first)?;
        for row in &rows {
            if row.opt_int(6)?.is_some() {
                record.versions.push(version_from_row(row, 6)?);
            }
        }
        Ok(Some(record))
    }

    async fn list_keyrings(&self) -> Result<Vec<KeyringId>> {
        let rows = self.query("list keyrings", &self.sql.list_keyrings, &[]).await?;
        let mut ids = rows
            .iter()
            .map(|r| {
                let text = r.text(0)?;
                KeyringId::from_str(text).map_err(|e| invalid(STORE, format!("stored keyring id {text:?}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        ids.sort();
        Ok(ids)
    }

    async fn update_keyring(
        &self,
        id: &KeyringId,
        expected_generation: u64,
        changes: &[KeyringChange],
    ) -> Result<KeyringRecord> {
        let canonical = id.canonical();
        let mut tx = self.pool.begin().await.map_err(on(STORE, "begin"))?;
        let head = tx.query(&self.sql.lock_keyring, &[(&canonical).into()]).await.map_err(on(STORE, "lock keyring"))?;
        let Some(head) = head.first() else {
            return Err(Error::KeyringNotFound(id.clone()));
        };
        let mut record = keyring_header(id, head)?;
        record.check_generation(expected_generation)?;
        for row in
            tx.query(&self.sql.load_versions, &[(&canonical).into()]).await.map_err(on(STORE, "load versions"))?
        {
            record.versions.push(version_from_row(&row, 0)?);
        }
        let before = record.clone();
        // The single definition of what a change means; on error nothing is written
        // (the transaction rolls back when dropped).
        record.apply(changes)?;
        self.write_versions(tx.as_mut(), &canonical, &before.versions, &record.versions).await?;
        tx.execute(
            &self.sql.set_generation,
            &[
                (&canonical).into(),
                generation_to_sql(record.generation)?.into(),
                record.seal.as_ref().map(|s| s.key_id.as_str()).into(),
                record.seal.as_ref().map(|s| s.mac.as_str()).into(),
                record.erased_at.map(millis).into(),
            ],
        )
        .await
        .map_err(on(STORE, "write generation, seal and erasure"))?;
        if key_changed(&before, &record) {
            self.notify(tx.as_mut(), &canonical).await?;
        }
        tx.commit().await.map_err(on(STORE, "commit keyring update"))?;
        Ok(record)
    }

    async fn acquire_lease(&self, id: &KeyringId, holder: &str, ttl: Duration, now: Timestamp) -> Result<Lease> {
        let canonical = id.canonical();
        let mut tx = self.pool.begin().await.map_err(on(STORE, "begin"))?;
        tx.execute(&self.sql.ensure_lease_row, &[(&canonical).into()]).await.map_err(on(STORE, "create lease row"))?;
        let rows = tx.query(&self.sql.lock_lease, &[(&canonical).into()]).await.map_err(on(STORE, "lock lease"))?;
        let row = rows.first().ok_or_else(|| invalid(STORE, format!("lease row of {id} vanished")))?;
        let current_holder = row.opt_text(0)?.map(str::to_owned);
        let last_token = row.int(1)?;
        let expires = row.opt_int(2)?;
        let last_token =
            u64::try_from(last_token).map_err(|_| invalid(STORE, format!("lease of {id} has a negative token")))?;
        let current = match (current_holder, expires) {
            (Some(holder), Some(expires)) => Some(Lease {
                keyring: id.clone(),
                holder,
                token: last_token,
                expires_at: Timestamp::from_millis(expires),
            }),
            _ => None,
        };
        let lease = grant_lease(current.as_ref(), id, holder, ttl, now, last_token)?;
        tx.execute(
            &self.sql.grant_lease,
            &[
                (&canonical).into(),
                (&lease.holder).into(),
                generation_to_sql(lease.token)?.into(),
                millis(lease.expires_at).into(),
            ],
        )
        .await
        .map_err(on(STORE, "grant lease"))?;
        tx.commit().await.map_err(on(STORE, "commit lease"))?;
        Ok(lease)
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration, now: Timestamp) -> Result<Lease> {
        let expires_at = now.plus(ttl);
        let n = self
            .execute(
                "renew lease",
                &self.sql.renew_lease,
                &[
                    (&lease.keyring.canonical()).into(),
                    generation_to_sql(lease.token)?.into(),
                    (&lease.holder).into(),
                    millis(expires_at).into(),
                ],
            )
            .await?;
        if n == 0 {
            return Err(Error::LeaseLost { keyring: lease.keyring.clone() });
        }
        Ok(Lease { expires_at, ..lease.clone() })
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        self.execute(
            "release lease",
            &self.sql.release_lease,
            &[(&lease.keyring.canonical()).into(), generation_to_sql(lease.token)?.into()],
        )
        .await?;
        Ok(())
    }

    async fn load_lease(&self, id: &KeyringId) -> Result<Option<Lease>> {
        let rows = self.query("load lease", &self.sql.load_lease, &[(&id.canonical()).into()]).await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let token = row.int(1)?;
        let expires = row.int(2)?;
        Ok(Some(Lease {
            keyring: id.clone(),
            holder: row.text(0)?.to_owned(),
            token: u64::try_from(token).map_err(|_| invalid(STORE, format!("lease of {id} has a negative token")))?,
            expires_at: Timestamp::from_millis(expires),
        }))
    }

    async fn save_job(&self, job: &RotationJob, lease: &Lease) -> Result<()> {
        if lease.keyring != job.keyring {
            // The fencing rule of `check_fence`: another keyring's lease never fences this job.
            return check_fence(None, lease);
        }
        // The engine saves a job after every batch: drivers send typed
        // parameters, one round trip (no separate prepare).
        let (phase, json) = (to_json(&job.phase, "job phase")?, to_json(job, "rotation job")?);
        let n = self
            .execute(
                "save job",
                &self.sql.save_job,
                &[
                    (&job.keyring.canonical()).into(),
                    generation_to_sql(lease.token)?.into(),
                    (&job.id).into(),
                    millis(job.started_at).into(),
                    (&phase).into(),
                    (&json).into(),
                ],
            )
            .await?;
        if n == 0 {
            return Err(Error::LeaseLost { keyring: lease.keyring.clone() });
        }
        Ok(())
    }

    async fn load_job(&self, id: &str) -> Result<Option<RotationJob>> {
        let rows = self.query("load job", &self.sql.load_job, &[id.into()]).await?;
        rows.first().map(|r| from_json(r.text(0)?, "rotation job")).transpose()
    }

    async fn list_jobs(&self, keyring: &KeyringId) -> Result<Vec<RotationJob>> {
        let rows = self.query("list jobs", &self.sql.list_jobs, &[(&keyring.canonical()).into()]).await?;
        let mut jobs =
            rows.iter().map(|r| from_json::<RotationJob>(r.text(0)?, "rotation job")).collect::<Result<Vec<_>>>()?;
        jobs.sort_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
        Ok(jobs)
    }

    async fn save_policy(&self, keyring: &KeyringId, policy: &Policy) -> Result<()> {
        let policy = to_json(policy, "policy")?;
        self.execute("save policy", &self.sql.save_policy, &[(&keyring.canonical()).into(), (&policy).into()]).await?;
        Ok(())
    }

    async fn load_policy(&self, keyring: &KeyringId) -> Result<Option<Policy>> {
        let rows = self.query("load policy", &self.sql.load_policy, &[(&keyring.canonical()).into()]).await?;
        rows.first().map(|r| from_json(r.text(0)?, "policy")).transpose()
    }
}
