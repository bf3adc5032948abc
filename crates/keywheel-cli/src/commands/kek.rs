//! `kek rotate`: rewrap every key under a new master key.

use std::sync::Arc;

use keywheel_core::{KekRing, KeyEncryptionKey, LocalKek, Rotator};
use serde_json::json;

use crate::cli::KekRotateArgs;
use crate::error::{CliError, OK};
use crate::output::{outln, print_json};
use crate::store::{self, Settings};

use super::plural;

pub(super) async fn kek_rotate(settings: &Settings, args: &KekRotateArgs, json: bool) -> Result<u8, CliError> {
    if let Some(path) = args.new_master_key_out.as_deref().filter(|p| p.exists()) {
        return Err(CliError::error(format!("{} exists already", path.display()))
            .with_hint("name a new file; keywheel never overwrites a key file"));
    }
    let old = settings.master_key()?;
    let generated = match &args.new_master_key_file {
        Some(_) => None,
        None => Some(LocalKek::generate_master_key()?),
    };
    let new = Arc::new(match (&args.new_master_key_file, &generated) {
        (Some(path), _) => LocalKek::from_file(path)?,
        (None, Some(key)) => LocalKek::from_base64(secrecy::ExposeSecret::expose_secret(key))?,
        (None, None) => return Err(CliError::usage("give --new-master-key-file or --new-master-key-out")),
    });
    if new.key_check() == old.key_check() {
        return Err(CliError::usage("the new master key is the current one").with_hint("give a different key"));
    }
    let check = new.key_check().to_owned();
    // One KEK serves both as the ring's primary (opening the store during the
    // rotation) and as the rotation's target.
    let ring: Arc<dyn KeyEncryptionKey> = Arc::new(KekRing::new(new.clone(), vec![Arc::new(old)]));
    let opened = store::open_with_kek(settings, ring).await?;
    if let (Some(path), Some(key)) = (&args.new_master_key_out, &generated) {
        // Saved before any key is rewrapped under it.
        store::write_secret_file(path, secrecy::ExposeSecret::expose_secret(key))?;
    }
    let report = Rotator::new(opened.kw.clone())?.rotate_kek(new).await?;
    if json {
        print_json(&json!({ "report": report, "key_check": check }))?;
    } else {
        outln!(
            "Rewrapped {} of {} under the new master key (key check value {check}); {} already were.",
            plural(report.keys, "key"),
            plural(report.keyrings, "keyring"),
            report.already_rewrapped
        );
        if let Some(path) = &args.new_master_key_out {
            outln!("The new master key is in {} (mode 0600); move it into your secret manager.", path.display());
        }
        outln!("From now on only the new master key opens this store. Keep the old one until every backup");
        outln!("of the store taken before now has expired: those backups are still wrapped under it.");
    }
    Ok(OK)
}
