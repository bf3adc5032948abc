//! `init`: create a store and, unless one is given, a master key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keywheel_core::LocalKek;
use secrecy::{ExposeSecret as _, SecretBox};
use serde_json::json;

use crate::cli::InitArgs;
use crate::error::{CliError, OK};
use crate::output::{outln, print_json};
use crate::store::{self, Location, Settings};

/// Where `init` writes a generated master key unless told otherwise.
const DEFAULT_MASTER_KEY_OUT: &str = "./master.key";

pub(super) async fn init(settings: &Settings, args: &InitArgs, json: bool) -> Result<u8, CliError> {
    // A key given by the operator is checked; otherwise a new one is made,
    // and saved before anything else is created.
    if !settings.kek_uri.is_local() {
        return init_remote(settings, args, json).await;
    }
    let (kek, generated) = if settings.has_master_key() {
        (Arc::new(settings.master_key()?), None)
    } else {
        let key = LocalKek::generate_master_key()?;
        let kek = LocalKek::from_base64(key.expose_secret())?;
        (Arc::new(kek), Some(key))
    };
    if let Location::Postgres { .. } = settings.location
        && generated.is_some()
        && store::postgres_has_keyrings(settings).await?
    {
        return Err(CliError::refused("this Postgres store already holds keyrings, so it has a master key")
            .with_hint("run `keywheel init` with that master key (--master-key-file) to upgrade its tables"));
    }
    if generated.is_some() {
        store::refuse_existing_file_store(settings)?;
    }
    // A generated key goes to a new file (never printed) unless printing is asked for.
    let key_file: Option<PathBuf> = match (&generated, args.print_master_key) {
        (Some(_), false) => Some(args.master_key_out.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_MASTER_KEY_OUT))),
        _ => None,
    };
    if let (Some(key), Some(path)) = (&generated, &key_file) {
        store::write_secret_file(path, key.expose_secret())?;
    }
    let done = store::create(settings, args.app_role.as_deref()).await?;
    if generated.is_none() {
        // An existing Postgres store: the given key (and a staged next key) must open its keys.
        store::open_with_kek(settings, settings.kek().await?).await?;
    }
    let printed = generated.as_ref().filter(|_| args.print_master_key);
    if json {
        print_json(&json!({
            "store": settings.location.describe(),
            "created": done,
            "master_key": printed.map(|k| k.expose_secret().to_owned()),
            "master_key_file": key_file,
            "key_check": kek.key_check(),
        }))?;
        return Ok(OK);
    }
    outln!("{done}");
    match (&key_file, printed) {
        (Some(path), _) => print_key_file_advice(path, "A new master key was written to"),
        (None, Some(key)) => print_shown_key(key),
        (None, None) => outln!("Using the configured master key (key check value {}).", kek.key_check()),
    }
    outln!("Key check value: {} (safe to record: it tells which master key opens this store).", kek.key_check());
    outln!("Next: keywheel keyring create TENANT/PURPOSE");
    Ok(OK)
}

/// `init` with a KMS or HSM KEK: no master key is made; the KEK must answer
/// (and open the keys of an existing Postgres store).
async fn init_remote(settings: &Settings, args: &InitArgs, json: bool) -> Result<u8, CliError> {
    if args.master_key_out.is_some() || args.print_master_key {
        return Err(CliError::usage(format!(
            "the KEK is {}: there is no master key to write",
            settings.kek_uri.describe()
        ))
        .with_hint("drop --master-key-out/--print-master-key, or pass --kek local:"));
    }
    let kek = settings.kek().await?;
    let done = store::create(settings, args.app_role.as_deref()).await?;
    store::open_with_kek(settings, kek).await?;
    if json {
        print_json(
            &json!({ "store": settings.location.describe(), "created": done, "kek": settings.kek_uri.describe() }),
        )?;
        return Ok(OK);
    }
    outln!("{done}");
    outln!("Keys are wrapped by the {}; no master key leaves it.", settings.kek_uri.describe());
    outln!("Next: keywheel keyring create TENANT/PURPOSE");
    Ok(OK)
}

/// What to do with a master key written to `path`.
pub(super) fn print_key_file_advice(path: &Path, what: &str) {
    outln!("\n{what} {} (mode 0600).", path.display());
    outln!("Move it into your secret manager; keep it away from the store and from version control.");
    outln!("Commands need it:  keywheel --master-key-file {} …", path.display());
    outln!("             or:  export KEYWHEEL_MASTER_KEY=\"$(cat {})\"", path.display());
}

/// A master key printed on request, once.
pub(super) fn print_shown_key(key: &SecretBox<str>) {
    outln!("\nNew master key (shown once, it cannot be recovered; losing it loses every key in the store):\n");
    outln!("    {}\n", key.expose_secret());
    outln!("Keep it in your secret manager, never next to the store or in version control.");
}
