//! `kek rotate`: rewrap every key under a new master key; `kek generate`: a
//! new master key file to stage as the next one.

use std::sync::Arc;

use keywheel_core::{KekRing, KeyEncryptionKey, LocalKek, Rotator};
use secrecy::ExposeSecret as _;
use serde_json::json;

use crate::cli::{KekGenerateArgs, KekRotateArgs};
use crate::error::{CliError, OK};
use crate::kek_uri::KekUri;
use crate::output::{outln, print_json};
use crate::store::{self, Settings};

use super::init::{print_key_file_advice, print_shown_key};
use super::plural;

pub(super) async fn kek_rotate(settings: &Settings, args: &KekRotateArgs, json: bool) -> Result<u8, CliError> {
    let target = match &args.new_kek {
        Some(uri) => Some(KekUri::parse(uri, "--new-kek")?),
        None => settings.next_kek_uri.clone(),
    };
    if let Some(target) = target.filter(|t| !t.is_local()) {
        if args.new_master_key_file.is_some() || args.new_master_key_out.is_some() || args.print_master_key {
            return Err(CliError::usage(format!("the new KEK is the {}: it needs no master key", target.describe()))
                .with_hint("drop --new-master-key-file/--new-master-key-out/--print-master-key"));
        }
        return rotate_to_remote(settings, &target, json).await;
    }
    if let Some(path) = args.new_master_key_out.as_deref().filter(|p| p.exists()) {
        return Err(CliError::error(format!("{} exists already", path.display()))
            .with_hint("name a new file; keywheel never overwrites a key file"));
    }
    // The current master key, when the current KEK is local (a KMS or HSM
    // KEK may be rotated to a new local master key too).
    let old_check = match settings.kek_uri.is_local() {
        true => Some(settings.master_key()?.key_check().to_owned()),
        false => None,
    };
    let staged = settings.next_master_key()?;
    let was_staged = staged.is_some();
    let generate = args.new_master_key_out.is_some() || args.print_master_key;
    let generated = if generate { Some(LocalKek::generate_master_key()?) } else { None };
    let new = match (&args.new_master_key_file, &generated, staged) {
        (Some(path), _, staged) => {
            let new = store::read_master_key_file(path)?;
            if let Some(staged) = staged.filter(|s| s.key_check() != new.key_check()) {
                return Err(CliError::usage(format!(
                    "--new-master-key-file (key check value {}) is not the staged next master key ({})",
                    new.key_check(),
                    staged.key_check()
                ))
                .with_hint("give one of them: the key every application has staged as the next master key"));
            }
            new
        }
        (None, Some(key), None) => LocalKek::from_base64(key.expose_secret())?,
        (None, Some(_), Some(_)) => {
            return Err(CliError::usage("a next master key is staged: `kek rotate` rewraps to it")
                .with_hint("drop --new-master-key-out/--print-master-key (or the staged next key)"));
        }
        (None, None, Some(staged)) => staged,
        (None, None, None) => {
            return Err(CliError::usage("no new master key given").with_hint(
                "stage one with --next-master-key-file or KEYWHEEL_MASTER_KEY_NEXT (see `keywheel kek generate`), \
                 or give --new-master-key-file PATH, or generate one with --new-master-key-out PATH",
            ));
        }
    };
    if old_check.as_deref() == Some(new.key_check()) {
        return Err(CliError::usage("the new master key is the current one").with_hint("give a different key"));
    }
    let check = new.key_check().to_owned();
    let new = Arc::new(new);
    // Opened as applications with the next key staged open it: the current
    // key wraps, the new one also unwraps, so a run that was interrupted (or
    // repeated after an application wrote under the old key) continues.
    let opened = store::open_with_kek(settings, ring_with(settings, new.clone()).await?).await?;
    if let (Some(path), Some(key)) = (&args.new_master_key_out, &generated) {
        // Saved before any key is rewrapped under it.
        store::write_secret_file(path, key.expose_secret())?;
    }
    let report = Rotator::new(opened.kw.clone())?.rotate_kek(new).await?;
    let printed = generated.as_ref().filter(|_| args.print_master_key);
    if json {
        print_json(&json!({
            "report": report,
            "key_check": check,
            "master_key": printed.map(|k| k.expose_secret().to_owned()),
            "master_key_file": generated.as_ref().and(args.new_master_key_out.as_ref()),
        }))?;
        return Ok(OK);
    }
    outln!(
        "Rewrapped {} of {} under the new master key (key check value {check}); {} already were.",
        plural(report.keys, "key"),
        plural(report.keyrings, "keyring"),
        report.already_rewrapped
    );
    if let Some(path) = &args.new_master_key_out {
        print_key_file_advice(path, "The new master key was written to");
    }
    if let Some(key) = printed {
        print_shown_key(key);
    }
    if !was_staged {
        outln!("No next master key was staged: processes that do not hold the new one fail from now on");
        outln!("(without downtime: stage it first with KEYWHEEL_MASTER_KEY_NEXT; see `keywheel kek generate`).");
    }
    outln!("Next: make it the current master key everywhere (KEYWHEEL_MASTER_KEY / --master-key-file) and");
    outln!("remove the staged next key; processes still on the old key keep working if they have the new one");
    outln!("staged. Keep the old key until every backup of the store taken before now has expired.");
    Ok(OK)
}

/// The KEKs the store is opened with ([`Settings::kek_parts`]: the current
/// one wraps) and `new`, which also unwraps and verifies.
async fn ring_with(settings: &Settings, new: Arc<dyn KeyEncryptionKey>) -> Result<Arc<dyn KeyEncryptionKey>, CliError> {
    let mut parts = settings.kek_parts().await?;
    let primary = parts.remove(0);
    parts.push(new);
    Ok(Arc::new(KekRing::new(primary, parts)))
}

/// `kek rotate` to a KMS or HSM KEK: rewrap every key under it.
async fn rotate_to_remote(settings: &Settings, target: &KekUri, json: bool) -> Result<u8, CliError> {
    let new = target.open_remote().await?.ok_or_else(|| CliError::error("not a KMS or HSM KEK"))?;
    let opened = store::open_with_kek(settings, ring_with(settings, Arc::clone(&new)).await?).await?;
    let report = Rotator::new(opened.kw.clone())?.rotate_kek(new).await?;
    if json {
        print_json(&json!({ "report": report, "kek": target.describe() }))?;
        return Ok(OK);
    }
    outln!(
        "Rewrapped {} of {} under the {}; {} already were.",
        plural(report.keys, "key"),
        plural(report.keyrings, "keyring"),
        target.describe(),
        report.already_rewrapped
    );
    if settings.next_kek_uri.is_none() {
        outln!("It was not staged: processes that do not hold it fail from now on");
        outln!("(without downtime: stage it first in every application, and with --next-kek here).");
    }
    outln!("Next: make it the KEK everywhere (--kek / KEYWHEEL_KEK / kek = \"…\" in keywheel.toml), restart the");
    outln!("applications with it alone, then retire the old KEK once every backup taken before now has expired.");
    Ok(OK)
}

pub(super) fn kek_generate(args: &KekGenerateArgs, json: bool) -> Result<u8, CliError> {
    let key = LocalKek::generate_master_key()?;
    let check = LocalKek::from_base64(key.expose_secret())?.key_check().to_owned();
    let file = (!args.print_master_key).then_some(&args.out);
    if let Some(path) = file {
        store::write_secret_file(path, key.expose_secret())?;
    }
    if json {
        let printed = args.print_master_key.then(|| key.expose_secret().to_owned());
        print_json(&json!({ "key_check": check, "master_key_file": file, "master_key": printed }))?;
        return Ok(OK);
    }
    match file {
        Some(path) => outln!("A new master key was written to {} (mode 0600).", path.display()),
        None => print_shown_key(&key),
    }
    outln!("Key check value: {check}.");
    outln!("Stage it as the next master key everywhere (KEYWHEEL_MASTER_KEY_NEXT or --next-master-key-file),");
    outln!("then run `keywheel kek rotate`.");
    Ok(OK)
}
