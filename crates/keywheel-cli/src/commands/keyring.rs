//! `keyring create|apply|seal|list|enable|destroy`: keyrings, their stored
//! policies, re-enabling of disabled versions and erasure.

use keywheel_core::{Algorithm, KeyState, KeyVersion, KeyringId, KeyringRecord, Policy, StatusReport};
use serde_json::json;

use crate::cli::{ApplyArgs, DestroyArgs, EnableArgs, KeyringCreateArgs, SealArgs};
use crate::config::unknown_algorithm;
use crate::error::{CliError, OK, PROBLEMS};
use crate::output::{PolicyJson, Table, Time, human_duration, out, outln, print_json, time};
use crate::store::{self, Opened, Settings};

use super::matched::matched_keyrings;
use super::{parse_keyring, version_list};

pub(super) async fn keyring_create(settings: &Settings, args: &KeyringCreateArgs, json: bool) -> Result<u8, CliError> {
    let id = parse_keyring(&args.keyring)?;
    // `*/purpose` in keywheel.toml means every tenant: a tenant named `*`
    // would be mistaken for that pattern.
    if id.tenant() == "*" {
        return Err(CliError::usage(format!("{id} is a pattern, not a keyring"))
            .with_hint("name one tenant (acme/token); `keyring apply` creates the keyrings a pattern matches"));
    }
    let configured = settings.config.keyring(&id);
    let algorithm = match &args.algorithm {
        Some(a) => a.parse::<Algorithm>().map_err(|_| CliError::usage(unknown_algorithm(a)))?,
        None => configured.and_then(|c| c.algorithm).unwrap_or_default(),
    };
    let policy = configured.map_or_else(|| Policy::for_purpose(id.purpose()), |c| c.policy.clone());
    let opened = store::open(settings).await?;
    let ring = opened.kw.create_keyring(&id, algorithm).await?;
    opened.kw.set_policy(&id, &policy).await?;
    let version = ring.active_version().map_or(0, KeyVersion::get);
    if json {
        print_json(&json!({
            "keyring": id, "algorithm": algorithm, "active_version": version, "policy": PolicyJson::from(&policy),
        }))?;
    } else {
        outln!(
            "Created keyring {id} ({algorithm}), version v{version} active; rotates every {}, grace period {}, \
             rollback window {}.",
            human_duration(policy.interval),
            human_duration(policy.grace_period),
            human_duration(policy.rollback_window)
        );
    }
    Ok(OK)
}

pub(super) async fn keyring_apply(settings: &Settings, args: &ApplyArgs, json: bool) -> Result<u8, CliError> {
    // The file was checked when it was loaded: nothing below can fail on it.
    let opened = store::open(settings).await?;
    let mut changes = Vec::new();
    for m in
        matched_keyrings(settings, &opened.kw.list_keyrings().await?, opened.pool.as_ref(), "there is nothing to apply")
            .await?
    {
        let (id, policy) = (&m.id, &m.entry.policy);
        let action = if !m.exists {
            if !args.dry_run {
                opened.kw.create_keyring(id, m.entry.algorithm.unwrap_or_default()).await?;
                opened.kw.set_policy(id, policy).await?;
            }
            "created"
        } else if opened.kw.policy(id).await? != *policy {
            if !args.dry_run {
                opened.kw.set_policy(id, policy).await?;
            }
            "policy updated"
        } else {
            "unchanged"
        };
        if !json {
            let verb = if args.dry_run && action != "unchanged" { format!("would be {action}") } else { action.into() };
            outln!("{id}: {verb} (from [keyrings.\"{}\"])", m.entry.pattern);
        }
        changes.push(json!({
            "keyring": id, "action": action, "entry": m.entry.pattern.to_string(), "policy": PolicyJson::from(policy),
        }));
    }
    if json {
        print_json(&json!({ "dry_run": args.dry_run, "keyrings": changes }))?;
    }
    Ok(OK)
}

pub(super) async fn keyring_seal(settings: &Settings, args: &SealArgs, json: bool) -> Result<u8, CliError> {
    let reason = args.reason.trim();
    if reason.is_empty() {
        return Err(CliError::usage("--reason is empty").with_hint("say who reviewed the records (it is audited)"));
    }
    // Opened without loading every keyring: unsealed ones would be refused.
    let opened = store::open_unverified(settings).await?;
    let ids = match &args.keyring {
        Some(k) => vec![parse_keyring(k)?],
        None => opened.kw.list_keyrings().await?,
    };
    let mut out = Vec::new();
    for id in ids {
        let sealed = opened.kw.seal_unsealed(&id, reason).await?;
        let record = opened.kw.record(&id).await?;
        let states: Vec<String> = record.versions.iter().map(|v| format!("v{} {}", v.version.get(), v.state)).collect();
        if !json {
            let what = if sealed { "sealed" } else { "already sealed, left alone" };
            outln!("{id}: {what} ({})", states.join(", "));
        }
        out.push(json!({ "keyring": id, "sealed": sealed, "versions": record.versions.iter()
            .map(|v| json!({ "version": v.version, "state": v.state, "compromised": v.compromised }))
            .collect::<Vec<_>>() }));
    }
    if json {
        print_json(&out)?;
    }
    Ok(OK)
}

/// A note on stderr when keywheel.toml gives a keyring another policy than the stored one.
pub(super) async fn warn_policy_drift(settings: &Settings, opened: &Opened, id: &KeyringId) -> Result<(), CliError> {
    if let Some(c) = settings.config.keyring(id)
        && c.policy != opened.kw.policy(id).await?
    {
        eprintln!(
            "keywheel: note: keywheel.toml gives {id} another policy than the stored one, which applies; \
             run `keywheel keyring apply` to store it"
        );
    }
    Ok(())
}

pub(super) async fn keyring_list(settings: &Settings, json: bool) -> Result<u8, CliError> {
    let opened = store::open(settings).await?;
    let mut table =
        Table::new(&["KEYRING", "ALGORITHM", "ACTIVE", "PENDING", "DEPRECATED", "DISABLED", "RETIRED", "CREATED"]);
    let mut out = Vec::new();
    for id in opened.kw.list_keyrings().await? {
        let record = opened.kw.record(&id).await?;
        let policy = opened.kw.policy(&id).await?;
        let by = |state: KeyState| -> Vec<u32> {
            record.versions.iter().filter(|v| v.state == state).map(|v| v.version.get()).collect()
        };
        table.row(vec![
            id.to_string(),
            record.algorithm.to_string(),
            version_list(&by(KeyState::Active)),
            version_list(&by(KeyState::Pending)),
            version_list(&by(KeyState::Deprecated)),
            version_list(&by(KeyState::Disabled)),
            version_list(&by(KeyState::Retired)),
            match record.erased_at {
                Some(at) => format!("{} (ERASED {at})", record.created_at),
                None => record.created_at.to_string(),
            },
        ]);
        let versions: Vec<_> = record
            .versions
            .iter()
            .map(|v| {
                json!({
                    "version": v.version, "state": v.state, "algorithm": v.algorithm, "created_at": Time(v.created_at),
                    "activated_at": time(v.activated_at), "deprecated_at": time(v.deprecated_at),
                    "retired_at": time(v.retired_at), "disabled_at": time(v.disabled_at),
                    "destroy_after": time(v.destroy_after), "encryptions": v.encryptions,
                })
            })
            .collect();
        out.push(json!({
            "keyring": id, "algorithm": record.algorithm, "generation": record.generation,
            "created_at": Time(record.created_at), "erased_at": time(record.erased_at), "versions": versions,
            "policy": PolicyJson::from(&policy),
        }));
    }
    if json {
        print_json(&out)?;
    } else if table.is_empty() {
        outln!("No keyrings yet. Create one with `keywheel keyring create TENANT/PURPOSE`.");
    } else {
        out!("{table}");
    }
    // Damaged keyring documents are left out of the list: say so (`status` details them).
    let damaged = opened.file.as_ref().map(|f| f.damaged()).transpose()?.unwrap_or_default();
    let left_out: Vec<_> = damaged.iter().filter(|d| d.kind == keywheel_file::DocumentKind::Keyring).collect();
    for d in &left_out {
        eprintln!("keywheel: warning: a damaged keyring document is left out: {}", d.problem);
    }
    Ok(if left_out.is_empty() { OK } else { PROBLEMS })
}

pub(super) async fn keyring_enable(settings: &Settings, args: &EnableArgs, json: bool) -> Result<u8, CliError> {
    let id = parse_keyring(&args.keyring)?;
    let version = KeyVersion::new(args.version).map_err(|e| CliError::usage(e.to_string()))?;
    let opened = store::open(settings).await?;
    let record = opened.kw.enable(&id, version, args.reason.as_deref()).await?;
    if json {
        print_json(&json!({ "keyring": id, "enabled": version, "state": state_of(&record, version) }))?;
    } else {
        outln!("Re-enabled {id} {version}: it decrypts again (deprecated); retire it again when nothing needs it.");
    }
    Ok(OK)
}

pub(super) async fn keyring_destroy(settings: &Settings, args: &DestroyArgs, json: bool) -> Result<u8, CliError> {
    let reason = args.reason.trim();
    if reason.is_empty() {
        return Err(CliError::usage("--reason is empty").with_hint("say why, e.g. the erasure request (it is audited)"));
    }
    let opened = store::open(settings).await?;
    let records = if args.target.contains('/') {
        let id = parse_keyring(&args.target)?;
        vec![opened.kw.destroy_keyring(&id, reason, args.now).await?]
    } else {
        opened.kw.destroy_tenant(&args.target, reason, args.now).await?
    };
    let mut out = Vec::new();
    for record in &records {
        let destroyed = record.versions.iter().all(|v| v.state == KeyState::Retired);
        let destroy_after = record.versions.iter().filter_map(|v| v.destroy_after).filter(|_| !destroyed).max();
        if !json {
            match destroy_after {
                Some(at) => outln!(
                    "Erased {}: every version disabled, nothing encrypts under it; its key material is destroyed \
                     after {at} (`keyring enable` can still bring a version back for reading until then).",
                    record.id
                ),
                None => outln!("Erased {}: every version destroyed, nothing encrypts under it.", record.id),
            }
        }
        out.push(json!({
            "keyring": record.id, "erased_at": time(record.erased_at), "destroyed": destroyed,
            "destroy_after": time(destroy_after),
            "versions": record.versions.iter().map(|v| json!({ "version": v.version, "state": v.state }))
                .collect::<Vec<_>>(),
        }));
    }
    if json {
        print_json(&json!({ "reason": reason, "now": args.now, "keyrings": out }))?;
    }
    Ok(OK)
}

fn state_of(record: &KeyringRecord, version: KeyVersion) -> Option<KeyState> {
    record.version(version).map(|v| v.state)
}

/// The lines `status` adds under its table: erased keyrings and disabled
/// versions with when each is destroyed.
pub(super) fn print_lifecycle_notes(report: &StatusReport) {
    for k in &report.keyrings {
        if let Some(at) = k.erased_at {
            outln!("{}: ERASED at {at}: nothing encrypts under it.", k.keyring);
        }
        for d in &k.disabled {
            let when = d.destroy_after.map_or("-".into(), |t| t.to_string());
            if d.due {
                outln!(
                    "{} {}: disabled, quarantine over since {when}: destroyed at the next scheduler tick.",
                    k.keyring,
                    d.version
                );
            } else {
                outln!(
                    "{} {}: disabled (decryption refused), destroyed after {when}; undo with \
                     `keywheel keyring enable {} --version {}`.",
                    k.keyring,
                    d.version,
                    k.keyring,
                    d.version.get()
                );
            }
        }
    }
}
