//! `inspect`: what a stored value's header says, without a key.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use crate::cli::InspectArgs;
use crate::error::{CliError, OK, PROBLEMS};
use crate::output::{outln, print_json};

/// The bytes of a value given on the command line: text form, hex or base64.
pub(super) fn value_bytes(value: &str) -> Result<Vec<u8>, CliError> {
    let v = value.trim();
    if v.starts_with(keywheel_core::TEXT_PREFIX) {
        return Ok(v.as_bytes().to_vec());
    }
    let hex = v.strip_prefix("\\x").or_else(|| v.strip_prefix("0x"));
    if let Some(hex) = hex {
        if !hex.len().is_multiple_of(2) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CliError::usage("the value starts like hex (\\x or 0x) but is not valid hex"));
        }
        return (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| CliError::usage("the value is not valid hex"));
    }
    STANDARD.decode(v).map_err(|_| {
        CliError::usage("the value is neither the text form (kw:v…), hex (\\x… or 0x…) nor base64")
            .with_hint("psql prints a bytea column as \\x…; pass that as it is, quoted")
    })
}

pub(super) fn inspect(args: &InspectArgs, json: bool) -> Result<u8, CliError> {
    let bytes = value_bytes(&args.value)?;
    match keywheel_core::parse(&bytes) {
        Ok(info) => {
            if json {
                print_json(&json!({ "valid": true, "info": info }))?;
            } else {
                let form = serde_json::to_value(info.form).ok().and_then(|v| v.as_str().map(str::to_owned));
                outln!("form            {}", form.unwrap_or_default());
                outln!("format version  {}", info.format_version);
                outln!("algorithm       {}", info.algorithm);
                outln!("key version     {}", info.version);
                outln!("binary length   {} bytes", info.binary_len);
                outln!("payload length  {} bytes", info.payload_len);
            }
            Ok(OK)
        }
        Err(e) => {
            if json {
                print_json(&json!({ "valid": false, "error": e.to_string() }))?;
            } else {
                outln!("not a valid keywheel value: {e}");
            }
            Ok(PROBLEMS)
        }
    }
}
