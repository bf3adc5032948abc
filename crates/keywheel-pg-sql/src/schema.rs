//! The keywheel schema: its name, its migrations and its notification channel.

use keywheel_core::{Error, GENESIS_HASH, Result};

use crate::driver::{Driver, POOL, Param, Transaction, first_bool, on};
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

    /// The schema's name, quoted as an identifier.
    pub fn quoted(&self) -> &str {
        &self.quoted
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
        description: "keyed audit chain: key id and MAC per audit entry",
        // Entries written before have no MAC ('' never verifies): a verifier
        // with keys reports them unless a later, authenticated entry vouches for them.
        sql: r#"
ALTER TABLE {s}."audit_log"
    ADD COLUMN key_id text NOT NULL DEFAULT '',
    ADD COLUMN mac    text NOT NULL DEFAULT '';
ALTER TABLE {s}."audit_log" ALTER COLUMN key_id DROP DEFAULT, ALTER COLUMN mac DROP DEFAULT;
"#,
    },
    Migration {
        version: 3,
        description: "keyring seals (record authentication)",
        sql: r#"
ALTER TABLE {s}."keyrings"
    ADD COLUMN seal_key_id text,
    ADD COLUMN seal_mac    text,
    ADD CONSTRAINT "keyrings_seal_whole" CHECK ((seal_key_id IS NULL) = (seal_mac IS NULL));
"#,
    },
    Migration {
        version: 4,
        description: "reversible retirement (disabled state) and keyring erasure",
        // The state check of migration 1 is named by Postgres' default
        // (`<table>_<column>_check`). Disabled versions keep their material,
        // so the material check stays as it is. Quarantine times live in
        // `meta` with the rest of the version record.
        sql: r#"
ALTER TABLE {s}."key_versions" DROP CONSTRAINT "key_versions_state_check";
ALTER TABLE {s}."key_versions" ADD CONSTRAINT "key_versions_state_check"
    CHECK (state IN ('pending', 'active', 'deprecated', 'disabled', 'retired'));
ALTER TABLE {s}."keyrings" ADD COLUMN erased_at_ms bigint;
"#,
    },
];

/// The schema version this build of keywheel expects (its latest migration).
pub const SCHEMA_VERSION: i32 = 4;

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Migrations applied by this call, in order.
    pub applied: Vec<i32>,
    /// The schema version now in place.
    pub version: i32,
}

/// How [`migrate_with`] runs: which application role to grant access to.
///
/// ```
/// let options = keywheel_pg_sql::MigrateOptions::new().app_role("app");
/// assert_eq!(options.app_role_name(), Some("app"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateOptions {
    app_role: Option<String>,
}

impl MigrateOptions {
    /// No application role: the connecting role owns and uses the tables.
    pub fn new() -> Self {
        Self::default()
    }

    /// After migrating, grant `role` (an existing role that does **not** own
    /// the schema) exactly what the application needs; see
    /// [`grant_application_role`].
    pub fn app_role(mut self, role: impl Into<String>) -> Self {
        self.app_role = Some(role.into());
        self
    }

    /// The application role, if any.
    pub fn app_role_name(&self) -> Option<&str> {
        self.app_role.as_deref()
    }
}

/// Create or upgrade keywheel's tables in `schema`: versioned and idempotent
/// (each migration runs once, recorded in `schema_migrations`), safe to call
/// from several processes at once (they serialize on an advisory lock), and
/// all in one transaction (a failed migration leaves nothing behind).
/// Nothing else ever changes the schema: call it at deployment or start-up.
/// A schema already up to date is left untouched (no DDL), so an application
/// role without `CREATE` rights may call it at start-up too.
///
/// A database whose schema is newer than this build is refused with
/// [`Error::Backend`]. To run the application as a separate, non-owner role
/// (recommended: the owner of `audit_log` can disable its append-only
/// triggers), use [`migrate_with`].
pub async fn migrate<D: Driver>(pool: &D, schema: &PgSchema) -> Result<MigrationReport> {
    migrate_with(pool, schema, &MigrateOptions::new()).await
}

/// [`migrate`], then (with [`MigrateOptions::app_role`]) grant the
/// application role its privileges in the same transaction, as
/// [`grant_application_role`] describes. Run it as the owner role (the
/// role that owns, or is to own, the schema), e.g. at deployment:
///
/// ```no_run
/// # async fn demo<D: keywheel_pg_sql::Driver>(owner: D) -> keywheel_core::Result<()> {
/// use keywheel_pg_sql::{MigrateOptions, PgSchema, migrate_with};
/// // `owner`: a pool connected as the owner role, e.g. `keywheel_owner`.
/// migrate_with(&owner, &PgSchema::default(), &MigrateOptions::new().app_role("app")).await?;
/// // The application connects as `app`: it can record audit entries and read
/// // them back, but not change, delete or truncate them, nor disable the trigger.
/// # Ok(()) }
/// ```
pub async fn migrate_with<D: Driver>(pool: &D, schema: &PgSchema, options: &MigrateOptions) -> Result<MigrationReport> {
    let mut tx = pool.begin().await.map_err(on(POOL, "begin migration"))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('keywheel migrate ' || $1::text)::bigint)",
        &[schema.name().into()],
    )
    .await
    .map_err(on(POOL, "lock for migration"))?;
    let q = &schema.quoted;
    let table = format!("{q}.\"schema_migrations\"");
    let exists = first_bool(
        &tx.query("SELECT to_regclass($1) IS NOT NULL", &[Param::from(&table)])
            .await
            .map_err(on(POOL, "look for schema_migrations"))?,
    )?;
    if exists && options.app_role.is_none() {
        let applied = applied_versions(tx.as_mut(), schema).await?;
        if MIGRATIONS.iter().all(|m| applied.contains(&m.version)) && applied.iter().all(|v| *v <= SCHEMA_VERSION) {
            tx.commit().await.map_err(on(POOL, "commit migration"))?;
            return Ok(MigrationReport { applied: Vec::new(), version: SCHEMA_VERSION });
        }
    }
    tx.batch(&format!(
        "CREATE SCHEMA IF NOT EXISTS {q};
         CREATE TABLE IF NOT EXISTS {q}.\"schema_migrations\" (
             version integer PRIMARY KEY,
             description text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())"
    ))
    .await
    .map_err(on(POOL, "create schema"))?;
    let applied_before = applied_versions(tx.as_mut(), schema).await?;
    if let Some(newer) = applied_before.iter().find(|v| **v > SCHEMA_VERSION) {
        return Err(Error::backend(
            POOL,
            format!(
                "schema {} is at version {newer}, newer than this keywheel ({SCHEMA_VERSION}); upgrade keywheel",
                schema.name()
            ),
            false,
        ));
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !applied_before.contains(&m.version)) {
        let sql = m.sql.replace("{s}", q).replace("{genesis}", GENESIS_HASH);
        tx.batch(&sql).await.map_err(|e| e.into_error(POOL, &format!("migration {}", m.version)))?;
        tx.execute(
            &format!("INSERT INTO {q}.\"schema_migrations\" (version, description) VALUES ($1, $2)"),
            &[m.version.into(), m.description.into()],
        )
        .await
        .map_err(on(POOL, "record migration"))?;
        applied.push(m.version);
    }
    if let Some(role) = &options.app_role {
        grant(tx.as_mut(), schema, role).await?;
    }
    tx.commit().await.map_err(on(POOL, "commit migration"))?;
    Ok(MigrationReport { applied, version: SCHEMA_VERSION })
}

/// The migrations recorded in `schema_migrations`, in order.
async fn applied_versions(tx: &mut dyn Transaction, schema: &PgSchema) -> Result<Vec<i32>> {
    let rows = tx
        .query(&format!("SELECT version FROM {}.\"schema_migrations\" ORDER BY version", schema.quoted), &[])
        .await
        .map_err(on(POOL, "read schema_migrations"))?;
    rows.iter()
        .map(|r| {
            let v = r.int(0)?;
            i32::try_from(v).map_err(|_| Error::backend(POOL, format!("schema_migrations holds version {v}"), false))
        })
        .collect()
}

/// Grant `role` what a keywheel application needs in a migrated `schema`,
/// and nothing more. Run as the schema's owner; idempotent; run it again
/// after an upgrade ([`migrate_with`] does) so new tables are covered.
///
/// * `USAGE` on the schema (not `CREATE`);
/// * `SELECT, INSERT, UPDATE, DELETE` on keywheel's state tables (keyrings,
///   versions, policies, jobs, leases);
/// * on `audit_log` only `SELECT` and `INSERT`: no `UPDATE`, `DELETE` or
///   `TRUNCATE`, and since it does not own the table it cannot disable the
///   append-only triggers, alter or drop it;
/// * `SELECT, UPDATE` on `audit_head` (each append advances it; a head set
///   back is caught by the sink and by [`SqlAuditSink::verify`](crate::SqlAuditSink::verify));
/// * `SELECT` on `schema_migrations`.
///
/// Refused ([`Error::Backend`]) if `role` does not exist, is a superuser, or
/// owns (or is a member of the owner of) the audit log: such a role could
/// rewrite the log whatever is granted.
pub async fn grant_application_role<D: Driver>(pool: &D, schema: &PgSchema, role: &str) -> Result<()> {
    let mut tx = pool.begin().await.map_err(on(POOL, "begin"))?;
    grant(tx.as_mut(), schema, role).await?;
    tx.commit().await.map_err(on(POOL, "commit grants"))
}

async fn grant(tx: &mut dyn Transaction, schema: &PgSchema, role: &str) -> Result<()> {
    let refuse = |why: String| Error::backend(POOL, format!("cannot make {role:?} the application role: {why}"), false);
    let rows = tx
        .query(
            "SELECT r.rolsuper, pg_has_role(r.oid, c.relowner, 'MEMBER') \
             FROM pg_roles r, pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE r.rolname = $1 AND n.nspname = $2 AND c.relname = 'audit_log'",
            &[role.into(), schema.name().into()],
        )
        .await
        .map_err(on(POOL, "look up the application role"))?;
    let Some(row) = rows.first() else {
        return Err(refuse(format!("no such role, or schema {} is not migrated", schema.name())));
    };
    let (superuser, owner) = (row.bool(0)?, row.bool(1)?);
    if superuser {
        return Err(refuse("it is a superuser, which can rewrite the audit log".into()));
    }
    if owner {
        return Err(refuse(
            "it owns the audit log (or is a member of its owner), so it could disable the append-only \
             triggers; run migrate as a separate owner role"
                .into(),
        ));
    }
    let (q, r) = (&schema.quoted, quote_ident(role)?);
    tx.batch(&format!(
        "GRANT USAGE ON SCHEMA {q} TO {r};
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {q} TO {r};
         REVOKE ALL ON {q}.\"audit_log\" FROM {r};
         GRANT SELECT, INSERT ON {q}.\"audit_log\" TO {r};
         REVOKE ALL ON {q}.\"audit_head\" FROM {r};
         GRANT SELECT, UPDATE ON {q}.\"audit_head\" TO {r};
         REVOKE ALL ON {q}.\"schema_migrations\" FROM {r};
         GRANT SELECT ON {q}.\"schema_migrations\" TO {r};"
    ))
    .await
    .map_err(on(POOL, "grant the application role"))
}
