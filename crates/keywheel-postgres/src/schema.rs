//! The keywheel schema: its name, its migrations and its notification channel.

use keywheel_core::{Error, GENESIS_HASH, Result};

use crate::PgPool;
use crate::error::{POOL, on};
use crate::ident::{MAX_IDENTIFIER_LEN, quote_ident};

/// The schema keywheel's own tables live in (default `keywheel`).
///
/// Everything keywheel stores — keyrings, versions, policies, jobs, leases and
/// the audit log — lives in this schema, created by [`migrate`]. Several
/// independent keywheel installations can share a database under different
/// schemas; each has its own notification channel ([`channel`](Self::channel)).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PgSchema {
    name: String,
    quoted: String,
}

impl Default for PgSchema {
    fn default() -> Self {
        // "keywheel" is a valid identifier.
        PgSchema { name: Self::DEFAULT.to_owned(), quoted: format!("\"{}\"", Self::DEFAULT) }
    }
}

impl PgSchema {
    /// The default schema name.
    pub const DEFAULT: &'static str = "keywheel";

    /// A schema called `name` (any identifier: it is always quoted).
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let quoted = quote_ident(&name)?;
        Ok(PgSchema { name, quoted })
    }

    /// The schema's name, unquoted.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `"schema"."table"`, quoted.
    pub(crate) fn table(&self, table: &str) -> String {
        format!("{}.\"{table}\"", self.quoted)
    }

    /// The `LISTEN`/`NOTIFY` channel on which every change of a keyring in this
    /// schema is announced, with the keyring's canonical id as payload:
    /// `keywheel:<schema>` (or a hash of the schema name when that would exceed
    /// Postgres' 63-byte limit on channel names).
    pub fn channel(&self) -> String {
        let plain = format!("keywheel:{}", self.name);
        if plain.len() <= MAX_IDENTIFIER_LEN {
            return plain;
        }
        // FNV-1a 64: a stable, dependency-free digest; a collision only costs extra reloads.
        let hash =
            self.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        format!("keywheel:{hash:016x}")
    }
}

/// One migration: its number and the statements it runs (`{s}` is the quoted schema).
struct Migration {
    version: i32,
    description: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "keyrings, versions, policies, jobs, leases, audit log",
        sql: r#"
CREATE TABLE {s}."keyrings" (
    id            text PRIMARY KEY,
    tenant        text NOT NULL,
    purpose       text NOT NULL,
    generation    bigint NOT NULL CHECK (generation >= 0),
    algorithm     text NOT NULL,
    created_at_ms bigint NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE {s}."key_versions" (
    keyring_id  text NOT NULL REFERENCES {s}."keyrings" (id) ON DELETE CASCADE,
    version     integer NOT NULL CHECK (version >= 1),
    state       text NOT NULL CHECK (state IN ('pending', 'active', 'deprecated', 'retired')),
    algorithm   text NOT NULL,
    origin      text NOT NULL,
    compromised boolean NOT NULL,
    kek_id      text,
    key_check   text,
    wrapped     bytea,
    meta        json NOT NULL,
    PRIMARY KEY (keyring_id, version),
    CHECK ((state = 'retired') = (wrapped IS NULL))
);
CREATE UNIQUE INDEX "key_versions_one_active" ON {s}."key_versions" (keyring_id) WHERE state = 'active';
CREATE TABLE {s}."policies" (
    keyring_id text PRIMARY KEY,
    policy     json NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE {s}."jobs" (
    id            text PRIMARY KEY,
    keyring_id    text NOT NULL,
    started_at_ms bigint NOT NULL,
    phase         text NOT NULL,
    job           json NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX "jobs_by_keyring" ON {s}."jobs" (keyring_id, started_at_ms);
CREATE TABLE {s}."leases" (
    keyring_id    text PRIMARY KEY,
    holder        text,
    token         bigint NOT NULL,
    expires_at_ms bigint,
    CHECK ((holder IS NULL) = (expires_at_ms IS NULL))
);
CREATE TABLE {s}."audit_log" (
    pos         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    seq         bigint NOT NULL,
    prev_hash   text NOT NULL,
    hash        text NOT NULL,
    event       json NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE {s}."audit_head" (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    next_seq  bigint NOT NULL,
    last_hash text NOT NULL
);
INSERT INTO {s}."audit_head" (next_seq, last_hash) VALUES (0, '{genesis}');
CREATE FUNCTION {s}."audit_log_append_only"() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'the keywheel audit log is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$fn$;
CREATE TRIGGER "audit_log_append_only" BEFORE UPDATE OR DELETE ON {s}."audit_log"
    FOR EACH ROW EXECUTE FUNCTION {s}."audit_log_append_only"();
CREATE TRIGGER "audit_log_no_truncate" BEFORE TRUNCATE ON {s}."audit_log"
    FOR EACH STATEMENT EXECUTE FUNCTION {s}."audit_log_append_only"();
"#,
    },
    Migration {
        version: 2,
        description: "keyring seals (record authentication)",
        sql: r#"
ALTER TABLE {s}."keyrings"
    ADD COLUMN seal_key_id text,
    ADD COLUMN seal_mac    text,
    ADD CONSTRAINT "keyrings_seal_whole" CHECK ((seal_key_id IS NULL) = (seal_mac IS NULL));
"#,
    },
];

/// The schema version this build of keywheel-postgres expects (its latest migration).
pub const SCHEMA_VERSION: i32 = 2;

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Migrations applied by this call, in order.
    pub applied: Vec<i32>,
    /// The schema version now in place.
    pub version: i32,
}

/// Create or upgrade keywheel's tables in `schema`: versioned and idempotent
/// (each migration runs once, recorded in `schema_migrations`), safe to call
/// from several processes at once (they serialize on an advisory lock), and
/// all in one transaction (a failed migration leaves nothing behind).
/// Nothing else ever changes the schema: call it at deployment or start-up.
///
/// A database whose schema is newer than this build is refused with
/// [`Error::Backend`].
pub async fn migrate(pool: &PgPool, schema: &PgSchema) -> Result<MigrationReport> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await.map_err(on(POOL, "begin migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('keywheel migrate ' || $1::text)::bigint)", &[&schema.name()])
        .await
        .map_err(on(POOL, "lock for migration"))?;
    let q = &schema.quoted;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {q};
         CREATE TABLE IF NOT EXISTS {q}.\"schema_migrations\" (
             version integer PRIMARY KEY,
             description text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())"
    ))
    .await
    .map_err(on(POOL, "create schema"))?;
    let applied_before: Vec<i32> = tx
        .query(&format!("SELECT version FROM {q}.\"schema_migrations\" ORDER BY version"), &[])
        .await
        .map_err(on(POOL, "read schema_migrations"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if let Some(newer) = applied_before.iter().find(|v| **v > SCHEMA_VERSION) {
        return Err(Error::backend(
            POOL,
            format!(
                "schema {} is at version {newer}, newer than this keywheel-postgres ({SCHEMA_VERSION}); upgrade keywheel",
                schema.name()
            ),
            false,
        ));
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !applied_before.contains(&m.version)) {
        let sql = m.sql.replace("{s}", q).replace("{genesis}", GENESIS_HASH);
        tx.batch_execute(&sql).await.map_err(|e| crate::error::pg(POOL, &format!("migration {}", m.version), &e))?;
        tx.execute(
            &format!("INSERT INTO {q}.\"schema_migrations\" (version, description) VALUES ($1, $2)"),
            &[&m.version, &m.description],
        )
        .await
        .map_err(on(POOL, "record migration"))?;
        applied.push(m.version);
    }
    tx.commit().await.map_err(on(POOL, "commit migration"))?;
    Ok(MigrationReport { applied, version: SCHEMA_VERSION })
}
