//! The keyrings `keywheel.toml` names: its exact entries, and for every
//! `*/purpose` pattern the keyrings of that purpose already in the store and
//! those of every tenant found in a `[[sources]]` table's `tenant_column`.

use std::collections::BTreeMap;

use keywheel_core::KeyringId;

use crate::config::{KeyringEntry, KeyringPattern};
use crate::error::CliError;
use keywheel_postgres::PgPool;

use crate::store::{self, Settings};

/// One keyring the file names, with the entry that applies to it (an exact
/// entry wins over a pattern).
#[derive(Debug)]
pub(super) struct Matched<'a> {
    pub(super) id: KeyringId,
    pub(super) entry: &'a KeyringEntry,
    /// Whether the store holds it already.
    pub(super) exists: bool,
}

/// Every keyring the entries of keywheel.toml match, sorted by id. A file
/// without `[keyrings]` is a configuration error: `what` (e.g. "`rotate
/// --all` has nothing to rotate") would do nothing.
pub(super) async fn matched_keyrings<'a>(
    settings: &'a Settings,
    existing: &[KeyringId],
    store_pool: Option<&PgPool>,
    what: &str,
) -> Result<Vec<Matched<'a>>, CliError> {
    let config = &settings.config;
    if config.keyrings.is_empty() {
        return Err(CliError::error(format!("keywheel.toml names no keyring, so {what}"))
            .with_hint("add [keyrings.\"tenant/purpose\"] or [keyrings.\"*/purpose\"] tables to keywheel.toml"));
    }
    let mut ids: Vec<KeyringId> = config
        .keyrings
        .iter()
        .filter_map(|e| match &e.pattern {
            KeyringPattern::Exact(id) => Some(id.clone()),
            KeyringPattern::EveryTenant(_) => None,
        })
        .collect();
    if config.has_patterns() {
        ids.extend(existing.iter().cloned());
        for source in store::pg_sources_on(settings, store_pool).await? {
            let tenants = source.keyrings().await.map_err(|e| {
                CliError::from(e).with_hint(format!(
                    "keywheel lists the tenants of {} to apply the [keyrings.\"*/…\"] patterns",
                    source.spec().source_name()
                ))
            })?;
            ids.extend(tenants);
        }
    }
    let mut out = BTreeMap::new();
    for id in ids {
        if let Some(entry) = config.keyring(&id) {
            let exists = existing.contains(&id);
            out.insert(id.clone(), Matched { id, entry, exists });
        }
    }
    Ok(out.into_values().collect())
}
