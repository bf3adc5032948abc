//! The `users` table and its endpoints: create a user, read one, find one by
//! email. Every user belongs to a tenant and is encrypted under that
//! tenant's keyring (`tenant/database`).
//!
//! Per row, `email` is stored encrypted (binary form, `bytea`) with its
//! blind index tag in `email_bidx` for lookups, and `api_token` encrypted in
//! text form (`kw:v{N}:…` in a `text` column); `name` is plain. Each value
//! is bound to its row by `Context::field("users", column, id)`: a value
//! copied to another row, column or tenant does not decrypt.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use keywheel::{Algorithm, BlindIndex, Context, KeyringId, Normalization, Purpose, version_of};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::Checked;

/// The table's name (also the `table` of every value's context).
pub const TABLE: &str = "users";
/// The encrypted email column.
pub const EMAIL: &str = "email";
/// The blind index column of `email`.
pub const EMAIL_INDEX: &str = "email_bidx";
/// The encrypted API token column (text form).
pub const API_TOKEN: &str = "api_token";

/// How `users.email` is indexed: trimmed and lower-cased, 16-byte tags.
pub fn email_index() -> BlindIndex {
    BlindIndex::new(TABLE, EMAIL).normalization(Normalization::TrimLowercase)
}

/// The context of `column` in row `id`.
fn context(column: &str, id: i64) -> Context {
    Context::field(TABLE, column, &id.to_string())
}

/// The keyring of `tenant`'s data.
pub fn keyring_id(tenant: &str) -> Result<KeyringId, ApiError> {
    Ok(KeyringId::new(tenant, Purpose::Database)?)
}

/// Create the application's table (idempotent). keywheel's own tables are
/// created by [`backend`](crate::backend).
pub async fn migrate(db: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS public.users (
             id bigint PRIMARY KEY,
             tenant text NOT NULL,
             name text NOT NULL,
             email bytea NOT NULL,
             email_bidx bytea,
             api_token text NOT NULL
         );
         CREATE SEQUENCE IF NOT EXISTS public.users_id_seq OWNED BY public.users.id;
         CREATE INDEX IF NOT EXISTS users_email_bidx ON public.users (email_bidx);",
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A tenant as `PUT /tenants/{tenant}` returns it.
#[derive(Serialize, Deserialize, Debug)]
pub struct Tenant {
    /// The tenant.
    pub tenant: String,
    /// Its keyring (`tenant/database`).
    pub keyring: String,
    /// The keyring's Active version.
    pub active_version: Option<u32>,
}

/// `PUT /tenants/{tenant}`: create the tenant's keyring (AES-256-GCM, the
/// `database` purpose's policy); 201, or 200 when it exists already.
pub async fn put_tenant(
    State(state): State<AppState>,
    Checked(Path(tenant)): Checked<Path<String>>,
) -> Result<(StatusCode, Json<Tenant>), ApiError> {
    let kid = keyring_id(&tenant)?;
    let (status, ring) = match state.keywheel().create_keyring(&kid, Algorithm::Aes256Gcm).await {
        Ok(ring) => (StatusCode::CREATED, ring),
        Err(keywheel::Error::KeyringExists(_)) => (StatusCode::OK, state.keywheel().keyring(&kid).await?),
        Err(e) => return Err(e.into()),
    };
    let active_version = ring.active_version().map(|v| v.get());
    Ok((status, Json(Tenant { keyring: kid.to_string(), tenant, active_version })))
}

/// The body of `POST /tenants/{tenant}/users`.
#[derive(Deserialize)]
pub struct NewUser {
    /// Display name (stored in plain text).
    pub name: String,
    /// Email address (encrypted, and indexed for lookups).
    pub email: String,
    /// API token (encrypted).
    pub api_token: String,
}

/// A user as the API returns it, decrypted.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct User {
    /// Row id.
    pub id: i64,
    /// The tenant.
    pub tenant: String,
    /// Display name.
    pub name: String,
    /// Email address.
    pub email: String,
    /// API token.
    pub api_token: String,
    /// The key versions the stored values are encrypted under.
    pub key_versions: KeyVersions,
}

/// Which key versions a user's stored values are on.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
pub struct KeyVersions {
    /// Of the encrypted email.
    pub email: u32,
    /// Of the email's blind index tag (0: no tag).
    pub email_bidx: u32,
    /// Of the encrypted API token.
    pub api_token: u32,
}

// Users hold personal data: their Debug shows the ids only.
impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User").field("id", &self.id).field("tenant", &self.tenant).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for NewUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUser").finish_non_exhaustive()
    }
}

/// The answer to a lookup by email.
#[derive(Serialize, Deserialize, Debug)]
pub struct Found {
    /// The users of the tenant with that email (normally zero or one).
    pub users: Vec<User>,
}

/// The query of `GET /tenants/{tenant}/users`.
#[derive(Deserialize)]
pub struct ByEmail {
    /// The email to look for (compared after trimming and lower-casing).
    pub email: Option<String>,
}

impl NewUser {
    fn validate(&self) -> Result<(), ApiError> {
        let email = self.email.trim();
        if email.is_empty() || email.len() > 320 || !email.contains('@') {
            return Err(ApiError::InvalidInput("email must be an address of at most 320 bytes"));
        }
        if self.api_token.is_empty() || self.api_token.len() > 512 {
            return Err(ApiError::InvalidInput("api_token must be 1 to 512 bytes"));
        }
        if self.name.len() > 200 {
            return Err(ApiError::InvalidInput("name must be at most 200 bytes"));
        }
        Ok(())
    }
}

/// `POST /tenants/{tenant}/users`: encrypt and store a user; 201 with the user.
pub async fn create(
    State(state): State<AppState>,
    Checked(Path(tenant)): Checked<Path<String>>,
    body: Result<Json<NewUser>, JsonRejection>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    // The rejection's own text may quote the body: answer a fixed sentence.
    let Json(new) = body.map_err(|_| ApiError::InvalidInput("the body must be JSON {name, email, api_token}"))?;
    new.validate()?;
    let kid = keyring_id(&tenant)?;
    // One snapshot for the row: value, tag and token under the same Active version.
    let ring = state.keywheel().keyring(&kid).await?;
    let id: i64 = sqlx::query_scalar("SELECT nextval('public.users_id_seq')").fetch_one(state.db()).await?;
    let email = ring.encrypt(new.email.as_bytes(), &context(EMAIL, id))?;
    let tag = ring.blind_index(new.email.as_bytes(), &email_index())?;
    let token = ring.encrypt_text(new.api_token.as_bytes(), &context(API_TOKEN, id))?;
    sqlx::query(
        "INSERT INTO public.users (id, tenant, name, email, email_bidx, api_token) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(&tenant)
    .bind(&new.name)
    .bind(&email)
    .bind(&tag)
    .bind(&token)
    .execute(state.db())
    .await?;
    let key_versions = versions(&email, Some(&tag), token.as_bytes());
    let user = User { id, tenant, name: new.name, email: new.email, api_token: new.api_token, key_versions };
    Ok((StatusCode::CREATED, Json(user)))
}

/// `GET /tenants/{tenant}/users/{id}`: one user, decrypted.
pub async fn read(
    State(state): State<AppState>,
    Checked(Path((tenant, id))): Checked<Path<(String, i64)>>,
) -> Result<Json<User>, ApiError> {
    let kid = keyring_id(&tenant)?;
    let row =
        sqlx::query("SELECT id, name, email, email_bidx, api_token FROM public.users WHERE id = $1 AND tenant = $2")
            .bind(id)
            .bind(&tenant)
            .fetch_optional(state.db())
            .await?
            .ok_or(ApiError::UserNotFound)?;
    Ok(Json(decrypt_row(&state, &kid, &tenant, &row).await?))
}

/// `GET /tenants/{tenant}/users?email=…`: the tenant's users with that email,
/// found through the blind index (`WHERE email_bidx = ANY($1)`, one term per
/// live key version, so lookups keep working during a rotation).
pub async fn find(
    State(state): State<AppState>,
    Checked(Path(tenant)): Checked<Path<String>>,
    Checked(Query(query)): Checked<Query<ByEmail>>,
) -> Result<Json<Found>, ApiError> {
    let email = query.email.ok_or(ApiError::InvalidInput("the query needs ?email=…"))?;
    let kid = keyring_id(&tenant)?;
    let ring = state.keywheel().keyring(&kid).await?;
    let index = email_index();
    let terms: Vec<Vec<u8>> = ring.index_terms(email.as_bytes(), &index)?.binary().to_vec();
    let rows = sqlx::query(
        "SELECT id, name, email, email_bidx, api_token FROM public.users \
         WHERE email_bidx = ANY($1) AND tenant = $2 ORDER BY id",
    )
    .bind(&terms)
    .bind(&tenant)
    .fetch_all(state.db())
    .await?;
    // Tags are truncated MACs: drop the (rare) rows whose email only shares a tag.
    let wanted = index.normalization_of().apply(email.as_bytes())?;
    let mut users = Vec::with_capacity(rows.len());
    for row in &rows {
        let user = decrypt_row(&state, &kid, &tenant, row).await?;
        if *index.normalization_of().apply(user.email.as_bytes())? == *wanted {
            users.push(user);
        }
    }
    Ok(Json(Found { users }))
}

/// Decrypt one row of `users` through the engine (its cached snapshot; a
/// value on a version the snapshot does not know yet, written by an
/// instance that refreshed first, makes it reload once).
async fn decrypt_row(state: &AppState, kid: &KeyringId, tenant: &str, row: &PgRow) -> Result<User, ApiError> {
    let id: i64 = row.try_get("id")?;
    let email: Vec<u8> = row.try_get(EMAIL)?;
    let tag: Option<Vec<u8>> = row.try_get(EMAIL_INDEX)?;
    let token: String = row.try_get(API_TOKEN)?;
    let plain_email = state.keywheel().decrypt(kid, &email, &context(EMAIL, id)).await?;
    let plain_token = state.keywheel().decrypt(kid, token.as_bytes(), &context(API_TOKEN, id)).await?;
    let utf8 = |_| keywheel::Error::InvalidArgument("a stored value is not UTF-8".into());
    Ok(User {
        id,
        tenant: tenant.to_owned(),
        name: row.try_get("name")?,
        email: plain_email.as_str().map_err(utf8)?.to_owned(),
        api_token: plain_token.as_str().map_err(utf8)?.to_owned(),
        key_versions: versions(&email, tag.as_deref(), token.as_bytes()),
    })
}

fn versions(email: &[u8], tag: Option<&[u8]>, token: &[u8]) -> KeyVersions {
    let v = |value: &[u8]| version_of(value).map_or(0, |v| v.get());
    KeyVersions { email: v(email), email_bidx: tag.map_or(0, v), api_token: v(token) }
}
