//! `audit verify|tail`: the audit trail.

use keywheel_core::{AuditEntry, ChainHead, ChainVerifier};
use serde_json::json;

use crate::cli::{AuditVerifyArgs, TailArgs};
use crate::error::{CliError, OK, PROBLEMS};
use crate::output::{AuditEntryJson, Table, audit_kind_json, out, outln, print_json};
use crate::store::{self, AuditVerdict, Settings};

/// What `audit verify` says when no master key was given.
const NO_KEY_NOTE: &str = "MACs NOT checked: no master key given, so only the structure was verified (anyone who \
                           can write the log could have re-hashed it); give the master key to authenticate the entries";

pub(super) async fn audit_verify(settings: &Settings, args: &AuditVerifyArgs, json: bool) -> Result<u8, CliError> {
    let audit = store::open_audit(settings).await?;
    // Auditors without the master key can still check the structure.
    let keys = match settings.has_master_key() {
        true => Some(settings.kek().await?.integrity_keys().await?),
        false => None,
    };
    let mut verifier = ChainVerifier::new();
    if let Some(keys) = &keys {
        verifier = verifier.keys(keys);
    }
    if let Some(head) = &args.expect_head {
        verifier = verifier.expect_head(head.clone());
    }
    let macs_checked = keys.is_some();
    let head_text =
        |head: &Option<ChainHead>| head.as_ref().map_or_else(|| "none (empty log)".to_owned(), ToString::to_string);
    match store::verify_audit(&audit, &verifier).await? {
        AuditVerdict::File(report) => {
            let intact = report.is_intact_but_torn();
            if json {
                let head = &report.head;
                print_json(&json!({ "intact": intact, "macs_checked": macs_checked, "head": head, "report": report }))?;
            } else {
                outln!("{report}");
                if !macs_checked {
                    outln!("{NO_KEY_NOTE}");
                }
            }
            Ok(if intact { OK } else { PROBLEMS })
        }
        AuditVerdict::Postgres(result, head) => {
            let place = settings.location.describe();
            match &result {
                Ok(n) if json => {
                    print_json(&json!({ "intact": true, "entries": n, "macs_checked": macs_checked, "head": head }))?
                }
                Ok(n) => {
                    let macs =
                        if macs_checked { "MACs checked" } else { "MACs NOT checked (no key given: structure only)" };
                    outln!("audit log in {place}: {n} entries, intact; {macs}\n  head: {}", head_text(&head));
                }
                Err(v) if json => {
                    print_json(&json!({ "intact": false, "violation": v, "macs_checked": macs_checked, "head": head }))?
                }
                Err(v) => outln!("audit log in {place}: DAMAGED: {v}\n  stored head: {}", head_text(&head)),
            }
            if !json && !macs_checked {
                outln!("{NO_KEY_NOTE}");
            }
            Ok(if result.is_ok() { OK } else { PROBLEMS })
        }
    }
}

pub(super) fn event_details(entry: &AuditEntry) -> (String, String) {
    let kind = audit_kind_json(&entry.event.kind);
    let name = kind.get("type").and_then(|t| t.as_str()).unwrap_or("?").to_owned();
    let details = kind
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| k.as_str() != "type")
                .map(|(k, v)| format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    (name, details)
}

pub(super) async fn audit_tail(settings: &Settings, args: &TailArgs, json: bool) -> Result<u8, CliError> {
    let audit = store::open_audit(settings).await?;
    let entries = store::audit_entries(&audit).await?;
    let tail = &entries[entries.len().saturating_sub(args.lines)..];
    if json {
        print_json(&tail.iter().map(AuditEntryJson::from).collect::<Vec<_>>())?;
        return Ok(OK);
    }
    let mut table = Table::new(&["SEQ", "TIME", "ACTOR", "KEYRING", "EVENT", "OUTCOME", "DETAILS"]);
    for e in tail {
        let (name, mut details) = event_details(e);
        if let Some(reason) = &e.event.reason {
            details = format!("{details} reason={reason:?}").trim().to_owned();
        }
        let outcome = serde_json::to_value(e.event.outcome).ok().and_then(|v| v.as_str().map(str::to_owned));
        table.row(vec![
            e.seq.to_string(),
            e.event.at.to_string(),
            e.event.actor.clone(),
            e.event.keyring.as_ref().map_or("-".into(), ToString::to_string),
            name,
            outcome.unwrap_or_default(),
            details,
        ]);
    }
    if table.is_empty() {
        outln!("The audit trail is empty.");
    } else {
        out!("{table}");
    }
    Ok(OK)
}
