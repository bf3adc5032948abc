//! `init`: create a store and, unless one is given, a master key.

use std::sync::Arc;

use keywheel_core::LocalKek;
use serde_json::json;

use crate::cli::InitArgs;
use crate::error::{CliError, OK};
use crate::output::{outln, print_json};
use crate::store::{self, Location, Settings};

pub(super) async fn init(settings: &Settings, args: &InitArgs, json: bool) -> Result<u8, CliError> {
    // A key given by the operator is checked; otherwise a new one is made,
    // and saved (if asked) before anything else is created.
    let (kek, generated) = if settings.has_master_key() {
        (Arc::new(settings.master_key()?), None)
    } else {
        let key = LocalKek::generate_master_key()?;
        let kek = LocalKek::from_base64(secrecy::ExposeSecret::expose_secret(&key))?;
        (Arc::new(kek), Some(key))
    };
    if let Location::Postgres { .. } = settings.location
        && generated.is_some()
        && store::postgres_has_keyrings(settings).await?
    {
        return Err(CliError::refused("this Postgres store already holds keyrings, so it has a master key")
            .with_hint("run `keywheel init` with that master key (KEYWHEEL_MASTER_KEY) to upgrade its tables"));
    }
    if let (Some(key), Some(path)) = (&generated, &args.master_key_out) {
        store::write_secret_file(path, secrecy::ExposeSecret::expose_secret(key))?;
    }
    let done = store::create(settings, args.app_role.as_deref()).await?;
    if generated.is_none() {
        // An existing Postgres store: the given key must open its keys.
        store::open_with_kek(settings, kek.clone()).await?;
    }
    let shown_key = generated.as_ref().filter(|_| args.master_key_out.is_none());
    if json {
        print_json(&json!({
            "store": settings.location.describe(),
            "created": done,
            "master_key": shown_key.map(|k| secrecy::ExposeSecret::expose_secret(k).to_owned()),
            "master_key_file": generated.as_ref().and(args.master_key_out.as_ref()),
            "key_check": kek.key_check(),
        }))?;
        return Ok(OK);
    }
    outln!("{done}");
    match (&generated, &args.master_key_out) {
        (None, _) => outln!("Using the configured master key (key check value {}).", kek.key_check()),
        (Some(_), Some(path)) => {
            outln!("\nA new master key was written to {} (mode 0600).", path.display());
            outln!("Move it into your secret manager; keep it away from the store and from version control.");
            outln!("Every command needs it:  export KEYWHEEL_MASTER_KEY=\"$(cat {})\"", path.display());
            outln!("                    or:  keywheel --master-key-file {} …", path.display());
        }
        (Some(key), None) => {
            outln!("\nNew master key (shown once, it cannot be recovered; losing it loses every key in the store):\n");
            outln!("    {}\n", secrecy::ExposeSecret::expose_secret(key));
            outln!("Keep it in your secret manager, never next to the store or in version control.");
            outln!("Every command needs it:  export KEYWHEEL_MASTER_KEY=<the key above>");
            outln!("                    or:  keywheel --master-key-file PATH …  (a file only you can read)");
        }
    }
    outln!("Key check value: {} (safe to record: it tells which master key opens this store).", kek.key_check());
    outln!("Next: keywheel keyring create TENANT/PURPOSE");
    Ok(OK)
}
