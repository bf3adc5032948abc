//! Legacy formats (issue #14) against values made by the real tools.
//!
//! Fernet tokens come from Python's `cryptography` and Lockbox values from
//! Ruby's `lockbox` gem (Debian `ruby-lockbox`), both run at test time;
//! `scripts/test.sh` installs them. When a tool is missing, the test that
//! needs it panics if `CI=true` or `KEYWHEEL_REQUIRE_LEGACY_TOOLS` is set and
//! otherwise prints a loud SKIP and returns. Known-answer vectors made once by
//! the same tools run everywhere, offline included.

use std::process::Command;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use keywheel_core::{
    Algorithm, Context, Error, FernetFormat, KeyMaterial, KeyState, Keyring, KeyringId, LegacyDecryptor, LegacyFormat,
    LegacyFormats, LegacyValue, LockboxFormat, PlaintextFormat, Purpose, Timestamp, VaultTransitFormat,
    looks_like_keywheel,
};
use proptest::prelude::*;
use serde_json::Value;

// ---------------------------------------------------------------------------
// Known-answer vectors, made once by the real tools.

/// `Fernet.generate_key()` (Python `cryptography` 48.0.0).
const FERNET_KEY: &str = "EEf2e03guMl1yOsGqJgpSlalH9xPW9tk9XjYXgpFtSE=";
/// `Fernet(FERNET_KEY).encrypt("Grüße, ☃ 🚀".encode())`
const FERNET_UNICODE: &str = "gAAAAABrEB8pOFAAShDvOkG1Jn4EoMlLM7GraQE7buh8omrVkdnCNvoH53IFfXPATANPHUbYOAwRQzFbpLu9F00N8QwuDKT09-d0cGBzRQtwH0FAen7zzys=";
/// `Fernet(FERNET_KEY).encrypt(b"")`
const FERNET_EMPTY: &str =
    "gAAAAABrEB8pG16m5N980TBcfCardr4rlegZEeUohEPF5OaZ4zBFbg3K1Q_ChJadk_bixmHPWndFEWZjk-cyNWl27JTypglsQA==";

/// `Fernet(FERNET_KEY).encrypt(b"standard alphabet")`, picked among tokens
/// for having no `-` nor `_`: it is standard base64 too, as Lockbox values are.
const FERNET_STANDARD_ALPHABET: &str = "gAAAAABrECBXNXDUKi2Cn9zxXBHjmTTglFEh9A5zmX0bbSyemms87p6BPAV5GYzXOIAOm9CrdoPlZeUO2hi17V4kDT3nEmsdYnzFLB0jzYgDJXtiDUow0ic=";

/// `Lockbox.generate_key` (lockbox 0.6.4).
const LOCKBOX_KEY: &str = "a761b9a5cf06112b1113035a52090fcc4f71fad9833ee5a459f422e5181df17c";
/// `Lockbox.new(key: LOCKBOX_KEY, encode: true).encrypt("Grüße, ☃ 🚀")`
const LOCKBOX_UNICODE: &str = "XPYLw9Oowo49cwPFoI2Xvig4/9Hw38nUs1QZ4+n/Um05ve0BkpuLqmqDjirv";
/// `Lockbox.new(key: LOCKBOX_KEY, encode: true).encrypt("row-bound", associated_data: "42")`
const LOCKBOX_WITH_AD: &str = "+7gWBhObxT9uezfehymfDtLDIg9OVyYDVpVNmxJBXriEs54LQQ==";

const UNICODE: &str = "Grüße, ☃ 🚀";

// ---------------------------------------------------------------------------
// Helpers.

fn at() -> Timestamp {
    Timestamp::from_millis(1_800_000_000_000)
}

fn decrypt_blocking(format: &dyn LegacyFormat, bytes: &[u8], context: &Context) -> keywheel_core::Result<Vec<u8>> {
    let LegacyDecryptor::Blocking(d) = format.decryptor() else { panic!("{} is not a blocking format", format.name()) };
    d.decrypt_one(&LegacyValue::new(bytes, context), at()).map(|p| p.as_bytes().to_vec())
}

fn keyring() -> Keyring {
    Keyring::builder(KeyringId::new("acme", Purpose::Database).expect("id"))
        .version(KeyState::Active, Algorithm::Aes256Gcm, KeyMaterial::generate().expect("rng"))
        .build()
        .expect("keyring")
}

/// Whether a missing tool must fail the test rather than skip it.
fn tools_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true") || std::env::var_os("KEYWHEEL_REQUIRE_LEGACY_TOOLS").is_some()
}

/// `None` (after a loud SKIP, or a panic when tools are required) if `what` is missing.
fn missing_tool(test: &str, what: &str, detail: &str) -> Option<String> {
    let message = format!(
        "{test}: {what} is not available ({detail}); scripts/test.sh installs it (pip install cryptography; apt-get install ruby ruby-lockbox)"
    );
    if tools_required() {
        panic!("{message} — required because CI=true or KEYWHEEL_REQUIRE_LEGACY_TOOLS is set");
    }
    eprintln!("\n!!!!!!!! SKIP !!!!!!!! {message}\n");
    None
}

/// Run a program and return its stdout, or `None` (skipped) when it cannot run.
fn run(test: &str, what: &str, program: &str, args: &[&str]) -> Option<String> {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => Some(String::from_utf8(out.stdout).expect("tool output is UTF-8")),
        Ok(out) => missing_tool(test, what, String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => missing_tool(test, what, &e.to_string()),
    }
}

fn python(test: &str, script: &str) -> Option<Value> {
    run(test, "Python 3 with the `cryptography` package", "python3", &["-c", "import cryptography"])?;
    let out = run(test, "Python 3 with the `cryptography` package", "python3", &["-c", script])?;
    Some(serde_json::from_str(&out).expect("python printed JSON"))
}

/// Lockbox 0.6 needs these loaded before it (it does not require them itself).
const RUBY_PRELUDE: &str = r#"require "stringio"; require "openssl"; require "base64"; require "securerandom"; require "json"; require "lockbox";"#;

fn ruby(test: &str, script: &str) -> Option<Value> {
    run(test, "Ruby with the `lockbox` gem", "ruby", &["-e", RUBY_PRELUDE])?;
    let out = run(test, "Ruby with the `lockbox` gem", "ruby", &["-e", &format!("{RUBY_PRELUDE}\n{script}")])?;
    Some(serde_json::from_str(&out).expect("ruby printed JSON"))
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("missing string {key} in {v}"))
}

fn b64(v: &Value, key: &str) -> Vec<u8> {
    STANDARD.decode(str_of(v, key)).expect("base64 from the tool")
}

/// The plaintexts every tool encrypts: empty, ASCII, unicode, long, binary.
const PLAINTEXTS_PY: &str = r#"
import base64, json
plaintexts = [b"", b"alice@example.com", "Grüße, ☃ 🚀 — ünïcödé".encode(), ("long value " * 1000).encode(), bytes(range(256))]
"#;

const PLAINTEXTS_RB: &str = r#"
plaintexts = ["".b, "alice@example.com".b, "Grüße, ☃ 🚀 — ünïcödé".b, ("long value " * 1000).b, (0..255).to_a.pack("C*")]
"#;

// ---------------------------------------------------------------------------
// Fernet.

#[test]
fn fernet_known_answers_decrypt_offline() {
    let format = FernetFormat::new([FERNET_KEY]).expect("key");
    let ctx = Context::empty();
    assert_eq!(decrypt_blocking(&format, FERNET_UNICODE.as_bytes(), &ctx).expect("decrypt"), UNICODE.as_bytes());
    assert_eq!(decrypt_blocking(&format, FERNET_EMPTY.as_bytes(), &ctx).expect("decrypt"), b"");
    // Unpadded storage of the same token decrypts too.
    let unpadded = FERNET_EMPTY.trim_end_matches('=');
    assert_eq!(decrypt_blocking(&format, unpadded.as_bytes(), &ctx).expect("decrypt"), b"");
}

#[test]
fn multifernet_values_from_python_decrypt() {
    let script = format!(
        r#"{PLAINTEXTS_PY}
from cryptography.fernet import Fernet, MultiFernet
new, old = Fernet.generate_key(), Fernet.generate_key()
values = []
for key in (new, old):
    for p in plaintexts:
        values.append({{"plaintext": base64.b64encode(p).decode(), "token": Fernet(key).encrypt(p).decode()}})
# MultiFernet encrypts under its first key; rotate() re-encrypts an old token under it.
multi = MultiFernet([Fernet(new), Fernet(old)])
values.append({{"plaintext": base64.b64encode(b"via multifernet").decode(), "token": multi.encrypt(b"via multifernet").decode()}})
values.append({{"plaintext": base64.b64encode(b"rotated").decode(), "token": multi.rotate(Fernet(old).encrypt(b"rotated")).decode()}})
print(json.dumps({{"keys": [new.decode(), old.decode()], "values": values}}))
"#
    );
    let Some(out) = python("multifernet_values_from_python_decrypt", &script) else { return };
    let keys: Vec<&str> = out["keys"].as_array().expect("keys").iter().map(|k| k.as_str().expect("key")).collect();
    // The list as a Django setting holds it: FERNET_KEYS = [new, old].
    let formats = LegacyFormats::new().with(FernetFormat::new(&keys).expect("keys"));
    let only_new = FernetFormat::new(&keys[..1]).expect("key");
    let ctx = Context::field("users", "email", "42");
    let ring = keyring();
    let values = out["values"].as_array().expect("values");
    assert_eq!(values.len(), 12);
    let mut under_old = 0;
    for v in values {
        let token = str_of(v, "token");
        let plaintext = b64(v, "plaintext");
        let format = formats.recognize(token.as_bytes()).expect("a Fernet token is recognised");
        assert_eq!(format.name(), "fernet");
        assert_eq!(decrypt_blocking(format, token.as_bytes(), &ctx).expect("decrypts"), plaintext);
        let read = formats.decrypt_or_legacy_blocking(&ring, token.as_bytes(), &ctx, at()).expect("read");
        assert_eq!(read.as_bytes(), plaintext.as_slice());
        if decrypt_blocking(&only_new, token.as_bytes(), &ctx).is_err() {
            under_old += 1;
        }
    }
    // The five tokens made under the old key need the second key of the list.
    assert_eq!(under_old, 5);
}

#[test]
fn django_fernet_fields_keys_from_python() {
    // django-fernet-fields' derivation (fernet_fields/hkdf.py), with cryptography's HKDF.
    let script = format!(
        r#"{PLAINTEXTS_PY}
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
def derive(secret):
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"django-fernet-fields-hkdf-salt", info=b"django-fernet-fields")
    return base64.urlsafe_b64encode(hkdf.derive(secret.encode()))
f = Fernet(derive("django-insecure-SECRET_KEY-value"))
print(json.dumps({{"values": [{{"plaintext": base64.b64encode(p).decode(), "token": f.encrypt(p).decode()}} for p in plaintexts]}}))
"#
    );
    let Some(out) = python("django_fernet_fields_keys_from_python", &script) else { return };
    let format = FernetFormat::from_django_fernet_fields(["another-older-secret", "django-insecure-SECRET_KEY-value"])
        .expect("keys");
    assert_eq!(format.key_count(), 2);
    let ctx = Context::empty();
    for v in out["values"].as_array().expect("values") {
        assert_eq!(
            decrypt_blocking(&format, str_of(v, "token").as_bytes(), &ctx).expect("decrypts"),
            b64(v, "plaintext")
        );
    }
}

#[test]
fn fernet_failures_are_opaque_or_typed() {
    let format = FernetFormat::new([FERNET_KEY]).expect("key");
    let ctx = Context::empty();
    let mut raw = URL_SAFE.decode(FERNET_UNICODE).expect("token");

    // Tampering anywhere (header, IV, ciphertext, MAC) is the opaque Decrypt.
    for i in [0usize, 5, 12, 30, raw.len() - 40, raw.len() - 1] {
        let mut tampered = raw.clone();
        tampered[i] ^= 0x01;
        let err = decrypt_blocking(&format, URL_SAFE.encode(&tampered).as_bytes(), &ctx).expect_err("tampered");
        if i == 0 {
            // The version byte is structure: typed, and says nothing about keys.
            assert!(matches!(err, Error::MalformedLegacy { .. }), "{err:?}");
        } else {
            assert!(matches!(err, Error::Decrypt), "byte {i}: {err:?}");
        }
    }
    // Wrong key (and a wrong MultiFernet list): opaque.
    let wrong = FernetFormat::new([
        "3q2-7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    ])
    .expect("keys");
    assert!(matches!(decrypt_blocking(&wrong, FERNET_UNICODE.as_bytes(), &ctx), Err(Error::Decrypt)));
    // Truncated: typed, still recognised (a damaged token is never plaintext).
    raw.truncate(60);
    let truncated = URL_SAFE.encode(&raw);
    assert!(format.recognizes(truncated.as_bytes()));
    let formats = LegacyFormats::new()
        .with(FernetFormat::new([FERNET_KEY]).expect("key"))
        .accept_plaintext_until(Timestamp::from_millis(i64::MAX));
    assert_eq!(formats.recognize(truncated.as_bytes()).map(|f| f.name()), Some("fernet"));
    let err = decrypt_blocking(&format, truncated.as_bytes(), &ctx).expect_err("truncated");
    assert!(matches!(err, Error::MalformedLegacy { ref format, .. } if format == "fernet"), "{err:?}");
    // Not base64 at all.
    assert!(matches!(decrypt_blocking(&format, b"gAAAAA!!", &ctx), Err(Error::MalformedLegacy { .. })));
    // Bad keys.
    assert!(matches!(FernetFormat::new(["too-short"]), Err(Error::InvalidKeyMaterial(_))));
    assert!(matches!(FernetFormat::new(Vec::<&str>::new()), Err(Error::InvalidKeyMaterial(_))));
    // No key in Debug.
    let shown = format!("{format:?}");
    assert!(!shown.contains(&FERNET_KEY[..8]), "{shown}");
}

// ---------------------------------------------------------------------------
// Lockbox.

#[test]
fn lockbox_known_answers_decrypt_offline() {
    let format = LockboxFormat::new(LOCKBOX_KEY).expect("key");
    let ctx = Context::empty();
    assert_eq!(decrypt_blocking(&format, LOCKBOX_UNICODE.as_bytes(), &ctx).expect("decrypt"), UNICODE.as_bytes());
    let with_ad = LockboxFormat::new(LOCKBOX_KEY).expect("key").associated_data_from("row");
    let row = Context::field("users", "email", "42");
    assert_eq!(decrypt_blocking(&with_ad, LOCKBOX_WITH_AD.as_bytes(), &row).expect("decrypt"), b"row-bound");
    // Another row: the associated data differs, opaque failure.
    let other = Context::field("users", "email", "43");
    assert!(matches!(decrypt_blocking(&with_ad, LOCKBOX_WITH_AD.as_bytes(), &other), Err(Error::Decrypt)));
    // No such pair in the context: typed.
    assert!(matches!(
        decrypt_blocking(&with_ad, LOCKBOX_WITH_AD.as_bytes(), &Context::empty()),
        Err(Error::InvalidContext(_))
    ));
}

#[test]
fn lockbox_values_from_ruby_decrypt() {
    let script = format!(
        r#"{PLAINTEXTS_RB}
key, old_key, master = Lockbox.generate_key, Lockbox.generate_key, Lockbox.generate_key
enc = ->(p) {{ Base64.strict_encode64(p) }}
values = []
plaintexts.each do |p|
  values << {{kind: "key", plaintext: enc.(p), value: Lockbox.new(key: key, encode: true).encrypt(p)}}
  values << {{kind: "old_key", plaintext: enc.(p), value: Lockbox.new(key: old_key, encode: true).encrypt(p)}}
  # What `has_encrypted :email` on User stores in users.email_ciphertext with LOCKBOX_MASTER_KEY set.
  box = Lockbox::Utils.build_box(nil, {{encode: true, master_key: master}}, "users", "email_ciphertext")
  values << {{kind: "master", plaintext: enc.(p), value: box.encrypt(p)}}
  values << {{kind: "ad", plaintext: enc.(p), value: Lockbox.new(key: key, encode: true).encrypt(p, associated_data: "42")}}
  values << {{kind: "padded", plaintext: enc.(p), value: Lockbox.new(key: key, encode: true, padding: true).encrypt(p)}}
  values << {{kind: "binary", plaintext: enc.(p), value: enc.(Lockbox.new(key: key).encrypt(p))}}
end
puts JSON.generate({{key: key, old_key: old_key, master: master, values: values}})
"#
    );
    let Some(out) = ruby("lockbox_values_from_ruby_decrypt", &script) else { return };
    let (key, old_key, master) = (str_of(&out, "key"), str_of(&out, "old_key"), str_of(&out, "master"));
    let with_previous = LockboxFormat::new(key).expect("key").previous_key(old_key).expect("old key");
    let from_master = LockboxFormat::from_master_key(master, "users", "email_ciphertext").expect("master");
    let with_ad = LockboxFormat::new(key).expect("key").associated_data_from("row");
    let padded = LockboxFormat::new(key).expect("key").padding(16).expect("padding");
    let binary = LockboxFormat::new(key).expect("key").binary();
    let row = Context::field("users", "email", "42");
    let values = out["values"].as_array().expect("values");
    assert_eq!(values.len(), 30);
    for v in values {
        let plaintext = b64(v, "plaintext");
        let (format, bytes) = match str_of(v, "kind") {
            "key" | "old_key" => (&with_previous, str_of(v, "value").as_bytes().to_vec()),
            "master" => (&from_master, str_of(v, "value").as_bytes().to_vec()),
            "ad" => (&with_ad, str_of(v, "value").as_bytes().to_vec()),
            "padded" => (&padded, str_of(v, "value").as_bytes().to_vec()),
            "binary" => (&binary, b64(v, "value")),
            other => panic!("unknown kind {other}"),
        };
        assert!(format.recognizes(&bytes), "{} value not recognised", str_of(v, "kind"));
        let got = decrypt_blocking(format, &bytes, &row).unwrap_or_else(|e| panic!("{}: {e:?}", str_of(v, "kind")));
        assert_eq!(got, plaintext, "{}", str_of(v, "kind"));
    }
    // Without the previous key, old-key values fail opaquely.
    let new_only = LockboxFormat::new(key).expect("key");
    let old = values.iter().find(|v| str_of(v, "kind") == "old_key").expect("an old-key value");
    assert!(matches!(decrypt_blocking(&new_only, str_of(old, "value").as_bytes(), &row), Err(Error::Decrypt)));
    // The master key for another column derives another key.
    let other_column = LockboxFormat::from_master_key(master, "users", "phone_ciphertext").expect("master");
    let by_master = values.iter().find(|v| str_of(v, "kind") == "master").expect("a master-key value");
    assert!(matches!(
        decrypt_blocking(&other_column, str_of(by_master, "value").as_bytes(), &row),
        Err(Error::Decrypt)
    ));
}

#[test]
fn lockbox_failures_are_opaque_or_typed() {
    let format = LockboxFormat::new(LOCKBOX_KEY).expect("key");
    let ctx = Context::empty();
    let raw = STANDARD.decode(LOCKBOX_UNICODE).expect("value");
    for i in [0usize, 11, 12, raw.len() - 17, raw.len() - 1] {
        let mut tampered = raw.clone();
        tampered[i] ^= 0x80;
        let err = decrypt_blocking(&format, STANDARD.encode(&tampered).as_bytes(), &ctx).expect_err("tampered");
        assert!(matches!(err, Error::Decrypt), "byte {i}: {err:?}");
    }
    let wrong = LockboxFormat::new(&"00".repeat(32)).expect("key");
    assert!(matches!(decrypt_blocking(&wrong, LOCKBOX_UNICODE.as_bytes(), &ctx), Err(Error::Decrypt)));
    let truncated = STANDARD.encode(&raw[..20]);
    let err = decrypt_blocking(&format, truncated.as_bytes(), &ctx).expect_err("truncated");
    assert!(matches!(err, Error::MalformedLegacy { ref format, .. } if format == "lockbox"), "{err:?}");
    assert!(matches!(decrypt_blocking(&format, b"not base64!", &ctx), Err(Error::MalformedLegacy { .. })));
    // Lockbox leaves "" unencrypted.
    assert!(format.recognizes(b""));
    assert_eq!(decrypt_blocking(&format, b"", &ctx).expect("empty"), b"");
    // Bad keys are typed and never echoed.
    let err = LockboxFormat::new("secret-but-not-hex").expect_err("bad key");
    assert!(matches!(err, Error::InvalidKeyMaterial(_)));
    assert!(!err.to_string().contains("secret-but-not-hex"));
    assert!(!format!("{format:?}").contains(&LOCKBOX_KEY[..8]));
}

#[test]
fn fernet_tokens_are_not_lockbox_values_whatever_the_order() {
    let formats = LegacyFormats::new()
        .with(LockboxFormat::new(LOCKBOX_KEY).expect("key"))
        .with(FernetFormat::new([FERNET_KEY]).expect("key"));
    assert_eq!(formats.names(), ["lockbox", "fernet"]);
    assert_eq!(formats.recognize(FERNET_STANDARD_ALPHABET.as_bytes()).map(|f| f.name()), Some("fernet"));
    assert_eq!(formats.recognize(LOCKBOX_UNICODE.as_bytes()).map(|f| f.name()), Some("lockbox"));
    let read = decrypt_blocking(
        formats.get("fernet").expect("fernet").as_ref(),
        FERNET_STANDARD_ALPHABET.as_bytes(),
        &Context::empty(),
    );
    assert_eq!(read.expect("decrypt"), b"standard alphabet");
}

// ---------------------------------------------------------------------------
// Vault transit through a stand-in for the application's Vault client.

/// A stand-in transit engine: `vault:v1:` + base64(plaintext reversed), counting calls.
fn stand_in_vault(calls: Arc<Mutex<Vec<Vec<String>>>>) -> VaultTransitFormat {
    VaultTransitFormat::new(move |batch: Vec<String>| {
        let calls = Arc::clone(&calls);
        async move {
            calls.lock().expect("lock").push(batch.clone());
            if batch.iter().any(|c| c.contains("DOWN")) {
                return Err(Error::backend("vault transit", "connection refused", true));
            }
            Ok(batch
                .iter()
                .map(|c| {
                    let payload = c.splitn(3, ':').nth(2).unwrap_or_default();
                    let mut bytes = STANDARD.decode(payload).map_err(|_| Error::Decrypt)?;
                    bytes.reverse();
                    if bytes == b"deny" {
                        return Err(Error::backend("vault transit", "permission denied", false));
                    }
                    Ok(bytes)
                })
                .collect())
        }
    })
}

fn vault_value(plaintext: &[u8]) -> String {
    let mut reversed = plaintext.to_vec();
    reversed.reverse();
    format!("vault:v1:{}", STANDARD.encode(reversed))
}

#[tokio::test]
async fn vault_transit_batches_through_the_caller_function() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let vault = stand_in_vault(Arc::clone(&calls));
    assert!(matches!(vault.decryptor(), LegacyDecryptor::Async(_)));
    let ctx = Context::empty();
    let good = [vault_value(b"alice@example.com"), vault_value(UNICODE.as_bytes()), vault_value(b"deny")];
    let values: Vec<LegacyValue<'_>> = good
        .iter()
        .map(|v| LegacyValue::new(v.as_bytes(), &ctx))
        .chain([LegacyValue::new(b"vault:v1:***", &ctx), LegacyValue::new(b"vault:vx:AAAA", &ctx)])
        .collect();
    let results = vault.decrypt_batch(&values, at()).await;
    assert_eq!(results.len(), 5);
    assert_eq!(results[0].as_ref().expect("ok").as_bytes(), b"alice@example.com");
    assert_eq!(results[1].as_ref().expect("ok").as_bytes(), UNICODE.as_bytes());
    assert!(matches!(results[2], Err(Error::Backend { retryable: false, .. })));
    assert!(matches!(results[3], Err(Error::MalformedLegacy { .. })));
    assert!(matches!(results[4], Err(Error::MalformedLegacy { .. })));
    // One call for the batch, with only the well-formed values.
    let seen = calls.lock().expect("lock").clone();
    assert_eq!(seen, vec![good.to_vec()]);

    // A failure of the whole call is every value's error, typed and retryable.
    let down = [vault_value(b"x"), "vault:v2:DOWN".to_owned()];
    let values: Vec<_> = down.iter().map(|v| LegacyValue::new(v.as_bytes(), &ctx)).collect();
    for r in vault.decrypt_batch(&values, at()).await {
        let err = r.expect_err("vault down");
        assert!(err.is_retryable(), "{err:?}");
        assert!(matches!(err, Error::Backend { ref message, .. } if message == "connection refused"));
    }

    // A function that answers with the wrong count: typed, for every value.
    let short = VaultTransitFormat::new(|_batch: Vec<String>| async { Ok(vec![Ok(b"only one".to_vec())]) });
    let two = [vault_value(b"a"), vault_value(b"b")];
    let values: Vec<_> = two.iter().map(|v| LegacyValue::new(v.as_bytes(), &ctx)).collect();
    for r in short.decrypt_batch(&values, at()).await {
        assert!(matches!(r, Err(Error::Backend { .. })));
    }
}

#[tokio::test]
async fn decrypt_or_legacy_reads_keywheel_and_every_opted_in_format() {
    let ring = keyring();
    let ctx = Context::field("users", "email", "42");
    let formats = LegacyFormats::new()
        .with(FernetFormat::new([FERNET_KEY]).expect("key"))
        .with(stand_in_vault(Arc::default()))
        .accept_plaintext_until(at().plus(std::time::Duration::from_secs(1)))
        .with(LockboxFormat::new(LOCKBOX_KEY).expect("key"));
    assert_eq!(formats.names(), ["fernet", "vault", "lockbox", "plaintext"]);

    let text = ring.encrypt_text(b"keywheel text", &ctx).expect("encrypt");
    let binary = ring.encrypt(b"keywheel binary", &ctx).expect("encrypt");
    let vault = vault_value(b"from vault");
    let cases: [(&[u8], &[u8], Option<&str>); 6] = [
        (text.as_bytes(), b"keywheel text", None),
        (&binary, b"keywheel binary", None),
        (FERNET_UNICODE.as_bytes(), UNICODE.as_bytes(), Some("fernet")),
        (LOCKBOX_UNICODE.as_bytes(), UNICODE.as_bytes(), Some("lockbox")),
        (vault.as_bytes(), b"from vault", Some("vault")),
        (b"plain@example.com", b"plain@example.com", Some("plaintext")),
    ];
    for (stored, plaintext, kind) in cases {
        assert_eq!(formats.recognize(stored).map(|f| f.name()), kind);
        let read = formats.decrypt_or_legacy(&ring, stored, &ctx, at()).await.expect("read");
        assert_eq!(read.as_bytes(), plaintext);
    }
    let census = formats.census(cases.iter().map(|c| c.0));
    assert_eq!((census.keywheel, census.legacy_total(), census.unrecognized), (2, 4, 0));

    // The blocking reader refuses the async format, typed.
    let err = formats.decrypt_or_legacy_blocking(&ring, vault.as_bytes(), &ctx, at()).expect_err("async");
    assert!(matches!(err, Error::InvalidArgument(_)));
    // A keywheel value under another context fails as keywheel, never as legacy.
    let other = Context::field("users", "email", "43");
    assert!(matches!(formats.decrypt_or_legacy(&ring, text.as_bytes(), &other, at()).await, Err(Error::Decrypt)));
    // A damaged keywheel value is not plaintext.
    assert!(formats.recognize(b"kw:v1:damaged").is_none());
    assert!(formats.decrypt_or_legacy(&ring, b"kw:v1:damaged", &ctx, at()).await.is_err());
}

#[tokio::test]
async fn blocking_formats_run_on_a_blocking_thread_as_the_engine_will() {
    let formats = LegacyFormats::new()
        .with(FernetFormat::new([FERNET_KEY]).expect("key"))
        .with(LockboxFormat::new(LOCKBOX_KEY).expect("key"));
    for stored in [FERNET_UNICODE, LOCKBOX_UNICODE] {
        let format = Arc::clone(formats.recognize_arc(stored.as_bytes()).expect("recognised"));
        let plaintext = tokio::task::spawn_blocking(move || {
            let ctx = Context::empty();
            match format.decryptor() {
                LegacyDecryptor::Blocking(d) => d.decrypt_one(&LegacyValue::new(stored.as_bytes(), &ctx), at()),
                LegacyDecryptor::Async(_) => panic!("{} should be blocking", format.name()),
            }
        })
        .await
        .expect("join")
        .expect("decrypt");
        assert_eq!(plaintext.as_bytes(), UNICODE.as_bytes());
    }
}

// ---------------------------------------------------------------------------
// Plaintext.

#[tokio::test]
async fn plaintext_needs_an_opt_in_and_ends_at_its_date() {
    let ring = keyring();
    let ctx = Context::field("users", "email", "42");
    let until = at();
    // No opt-in: plaintext is a failure (the keyring's format error).
    let none = LegacyFormats::new();
    assert!(none.recognize(b"alice@example.com").is_none());
    assert!(matches!(none.decrypt_or_legacy(&ring, b"alice@example.com", &ctx, until).await, Err(Error::Format(_))));
    assert_eq!(none.census([&b"alice@example.com"[..]]).unrecognized, 1);

    let formats = LegacyFormats::new().accept_plaintext_until(until);
    let before = until.minus(std::time::Duration::from_millis(1));
    assert_eq!(formats.decrypt_or_legacy(&ring, b"alice", &ctx, before).await.expect("accepted").as_bytes(), b"alice");
    let err = formats.decrypt_or_legacy(&ring, b"alice", &ctx, until).await.expect_err("after the end date");
    assert!(matches!(err, Error::PlaintextNotAccepted { until: u } if u == until), "{err:?}");
    assert!(!err.is_retryable());

    // Plaintext is tried last even when added first; ciphertexts of
    // formats not configured are not taken for plaintext.
    let order = LegacyFormats::new()
        .accept_plaintext_until(Timestamp::from_millis(i64::MAX))
        .with(FernetFormat::new([FERNET_KEY]).expect("key"));
    assert_eq!(order.names(), ["fernet", "plaintext"]);
    assert_eq!(order.recognize(FERNET_UNICODE.as_bytes()).map(|f| f.name()), Some("fernet"));
    let plain_only = LegacyFormats::new().accept_plaintext_until(Timestamp::from_millis(i64::MAX));
    assert!(plain_only.recognize(FERNET_UNICODE.as_bytes()).is_none());
    assert!(plain_only.recognize(b"vault:v3:AAAA").is_none());
    assert_eq!(PlaintextFormat::until(until).accepted_until(), until);
}

// ---------------------------------------------------------------------------
// Properties.

fn all_formats() -> LegacyFormats {
    LegacyFormats::new()
        .with(FernetFormat::new([FERNET_KEY]).expect("key"))
        .with(LockboxFormat::new(LOCKBOX_KEY).expect("key"))
        .with(stand_in_vault(Arc::default()))
        .accept_plaintext_until(Timestamp::from_millis(i64::MAX))
}

fn arbitrary_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        "[A-Za-z0-9+/=_-]{0,120}".prop_map(String::into_bytes),
        "gAAAAA[A-Za-z0-9_=-]{0,120}".prop_map(String::into_bytes),
        "vault:v[0-9]{0,3}:?[A-Za-z0-9+/=]{0,60}".prop_map(String::into_bytes),
        "kw[:v0-9]{0,4}[A-Za-z0-9+/=]{0,40}".prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random bytes never panic recognition nor decryption, whatever the format.
    #[test]
    fn random_bytes_never_panic(value in arbitrary_value()) {
        let formats = all_formats();
        let ctx = Context::field("t", "c", "1");
        let _ = formats.recognize(&value);
        let _ = formats.census([&value[..]]);
        for format in formats.iter() {
            let _ = format.recognizes(&value);
            let results = futures::executor::block_on(format.decrypt_batch(&[LegacyValue::new(&value, &ctx)], at()));
            prop_assert_eq!(results.len(), 1);
        }
        let _ = futures::executor::block_on(formats.decrypt_or_legacy(&keyring(), &value, &ctx, at()));
    }

    /// A keywheel value, text or binary, is never recognised as legacy.
    #[test]
    fn keywheel_values_are_never_legacy(plaintext in proptest::collection::vec(any::<u8>(), 0..64)) {
        let ring = keyring();
        let ctx = Context::field("t", "c", "1");
        let formats = all_formats();
        let binary = ring.encrypt(&plaintext, &ctx).expect("encrypt");
        let text = ring.encrypt_text(&plaintext, &ctx).expect("encrypt");
        for stored in [&binary[..], text.as_bytes()] {
            prop_assert!(looks_like_keywheel(stored));
            prop_assert!(formats.recognize(stored).is_none());
            let read = ring.decrypt(stored, &ctx).expect("decrypt");
            prop_assert_eq!(read.as_bytes(), &plaintext[..]);
        }
    }
}
