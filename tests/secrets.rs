//! The security model (manual, "Security model"): no key byte in Debug, Display or errors. Every type that holds or
//! touches key material, and every error we can provoke, is rendered and
//! searched for the material, the master key and the derived keys in hex,
//! decimal and base64.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use hkdf::Hkdf;
use keywheel::{
    Algorithm, Context, Error, KeyEncryptionKey, KeyMaterial, KeyState, KeyVersion, Keyring, KeyringId, LocalKek,
    Purpose, WrappedKey,
};
use sha2::Sha256;

/// Distinctive key material: 32 × 0xA5 ("165, 165, …", "a5a5…", "paWl…").
const MATERIAL: [u8; 32] = [0xA5; 32];

/// A non-uniform master key, so windowed searches are meaningful.
fn master() -> [u8; 32] {
    std::array::from_fn(|i| 0x5A ^ (i as u8).wrapping_mul(0x1D))
}

/// A second, equally recognisable material for other versions.
fn material2() -> [u8; 32] {
    std::array::from_fn(|i| 0xC3u8.wrapping_add(i as u8 * 3))
}

fn keyring_id() -> KeyringId {
    KeyringId::new("acme", Purpose::Token).expect("valid id")
}

/// The per-version key of the key derivation (manual, "Wire format v1") (so a leaked derived key is caught too).
fn derived(material: &[u8; 32], alg: Algorithm, keyring: &str, version: u32) -> [u8; 32] {
    let label: &[u8] = match alg {
        Algorithm::HmacSha256 => b"mac",
        // An AEAD version's blind index key.
        Algorithm::BlindIndex => b"index",
        _ => b"aead",
    };
    let len = u16::try_from(keyring.len()).expect("short id").to_be_bytes();
    let info = [label, &[alg.id()], &len, keyring.as_bytes(), &version.to_be_bytes()].concat();
    let mut okm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(b"keywheel/v1"), material).expand(&info, &mut okm).expect("valid length");
    okm
}

/// Every secret the outputs below must not reveal.
fn secrets() -> Vec<(&'static str, Vec<u8>)> {
    let mut out =
        vec![("material", MATERIAL.to_vec()), ("material2", material2().to_vec()), ("master key", master().to_vec())];
    for (v, m) in [(1, MATERIAL), (2, material2())] {
        for alg in Algorithm::ALL {
            out.push(("derived key", derived(&m, alg, "acme/token", v).to_vec()));
        }
    }
    out
}

/// The renderings a leak could take: hex (lower, upper, spaced `{:x?}`),
/// decimal lists (`{:?}` of a byte slice), base64 (standard, URL-safe, padded
/// or not), over windows so that partial leaks are caught as well.
fn needles(secret: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for w in secret.windows(6) {
        let hex: String = w.iter().map(|b| format!("{b:02x}")).collect();
        out.push(hex.to_uppercase());
        out.push(hex);
    }
    for w in secret.windows(3) {
        out.push(w.iter().map(u8::to_string).collect::<Vec<_>>().join(", "));
        out.push(w.iter().map(u8::to_string).collect::<Vec<_>>().join(","));
        out.push(w.iter().map(|b| format!("{b:x}")).collect::<Vec<_>>().join(", "));
        out.push(w.iter().map(|b| format!("{b:#04x}")).collect::<Vec<_>>().join(", "));
    }
    // Any base64 rendering of a buffer containing the secret contains the
    // encoding of a 12-byte run starting at one of the first three offsets.
    for k in 0..3 {
        let run = &secret[k..k + 12];
        out.push(STANDARD.encode(run));
        out.push(URL_SAFE.encode(run));
    }
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        out.push(engine.encode(secret));
    }
    // As raw characters (Latin-1 reading of the bytes).
    out.push(secret.iter().map(|&b| char::from(b)).collect());
    out
}

fn compact(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_lowercase()
}

/// The first needle of any secret found in `text`, if any. Matching ignores
/// case and whitespace (so `{:#?}` pretty-printing is caught too).
fn leak(text: &str, extra: &[String]) -> Option<String> {
    let flat = compact(text);
    for (name, secret) in secrets() {
        for needle in needles(&secret) {
            if text.contains(&needle) || flat.contains(&compact(&needle)) {
                return Some(format!("{name} as {needle:?}"));
            }
        }
    }
    extra.iter().find(|n| text.contains(n.as_str())).map(|n| format!("input {n:?}"))
}

fn assert_clean(what: &str, text: &str) {
    assert_clean_of(what, text, &[]);
}

fn assert_clean_of(what: &str, text: &str, extra: &[String]) {
    assert!(!text.is_empty(), "{what}: empty rendering");
    if let Some(found) = leak(text, extra) {
        panic!("{what} leaks {found}: {text}");
    }
}

fn assert_error_clean(what: &str, e: &Error, extra: &[String]) {
    assert_clean_of(&format!("{what} (Display)"), &e.to_string(), extra);
    assert_clean_of(&format!("{what} (Debug)"), &format!("{e:?}"), extra);
    assert_clean_of(&format!("{what} (alt Debug)"), &format!("{e:#?}"), extra);
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        assert_clean_of(&format!("{what} (source)"), &s.to_string(), extra);
        source = s.source();
    }
}

fn material(bytes: &[u8; 32]) -> KeyMaterial {
    KeyMaterial::from_slice(bytes).expect("32 bytes")
}

// ---------------------------------------------------------------------------

/// The checker itself must find leaks, or every other test here proves nothing.
#[test]
fn checker_detects_every_rendering() {
    let m = MATERIAL;
    let k = master();
    let leaky = [
        format!("{m:?}"),
        format!("{:?}", &m[5..9]),
        format!("{m:x?}"),
        format!("{:#x?}", &k[..4]),
        m.iter().map(|b| format!("{b:02X}")).collect::<String>(),
        k[10..17].iter().map(|b| format!("{b:02x}")).collect::<String>(),
        STANDARD.encode(m),
        format!("key={}", STANDARD_NO_PAD.encode([&[1u8][..], &k].concat())),
        URL_SAFE_NO_PAD.encode(&k[2..20]),
        format!("{:?}", k.to_vec()),
        m.iter().map(|&b| char::from(b)).collect::<String>(),
    ];
    for text in leaky {
        assert!(leak(&text, &[]).is_some(), "the checker misses {text}");
    }
    assert!(leak("KeyMaterial([REDACTED])", &[]).is_none());
    assert!(leak("unknown key version v165", &[]).is_none());
}

#[test]
fn key_material_debug_is_redacted() {
    for m in [MATERIAL, material2(), master()] {
        let km = material(&m);
        assert_clean("KeyMaterial Debug", &format!("{km:?}"));
        assert_clean("KeyMaterial alt Debug", &format!("{km:#?}"));
    }
    let generated = KeyMaterial::generate().expect("rng");
    let raw = *generated.expose_secret();
    let text = format!("{generated:?} {generated:#?}");
    for needle in needles(&raw) {
        assert!(!text.contains(&needle), "generated material leaks: {text}");
    }
}

#[test]
fn keyring_and_builder_debug_hold_no_key_bytes() {
    for alg in Algorithm::KEYS {
        let builder = Keyring::builder(keyring_id()).version(KeyState::Deprecated, alg, material(&MATERIAL)).version(
            KeyState::Active,
            alg,
            material(&material2()),
        );
        assert_clean("KeyringBuilder Debug", &format!("{builder:?}"));
        assert_clean("KeyringBuilder alt Debug", &format!("{builder:#?}"));
        let ring = builder.build().expect("valid keyring");
        let ctx = Context::field("users", "email", "42");
        // Use the keyring first, so any lazily kept state is populated.
        if alg.is_aead() {
            let v = ring.encrypt(b"x", &ctx).expect("encrypt");
            ring.decrypt(&v, &ctx).expect("decrypt");
        } else {
            let s = ring.sign(b"x", &ctx).expect("sign");
            ring.verify(b"x", &s, &ctx).expect("verify");
        }
        let text = format!("{ring:?}");
        assert!(text.contains("acme/token") || text.contains("acme"), "Debug should still be useful: {text}");
        assert_clean("Keyring Debug", &text);
        assert_clean("Keyring alt Debug", &format!("{ring:#?}"));
    }
}

#[tokio::test]
async fn local_kek_and_wrapped_key_debug_hold_no_key_bytes() {
    let kek = LocalKek::from_bytes(&master());
    assert_clean("LocalKek Debug", &format!("{kek:?}"));
    assert_clean("LocalKek alt Debug", &format!("{kek:#?}"));
    let from_b64 = LocalKek::from_base64(&STANDARD.encode(master())).expect("valid master key");
    assert_eq!(from_b64.key_check(), kek.key_check(), "same master key, same check value");
    assert_clean("LocalKek (base64) Debug", &format!("{from_b64:?}"));
    assert_clean("LocalKek key check value", kek.key_check());

    let wrapped = kek.wrap(&keyring_id(), KeyVersion::FIRST, &material(&MATERIAL)).await.expect("wrap");
    assert_clean("WrappedKey Debug", &format!("{wrapped:?}"));
    assert_clean("WrappedKey alt Debug", &format!("{wrapped:#?}"));
    // The stored form carries only ciphertext: no raw material inside.
    assert!(!wrapped.ciphertext.windows(8).any(|w| MATERIAL.windows(8).any(|m| m == w)));
    assert_clean("WrappedKey ciphertext (base64)", &STANDARD.encode(&wrapped.ciphertext));

    let generated = LocalKek::generate_master_key().expect("rng");
    let exposed = secrecy::ExposeSecret::expose_secret(&generated).to_owned();
    let text = format!("{generated:?}");
    assert!(!text.contains(&exposed), "generated master key leaks in Debug: {text}");
}

#[tokio::test]
async fn kek_errors_name_the_kek_not_the_key() {
    let id = keyring_id();
    let v1 = KeyVersion::FIRST;
    let kek = LocalKek::from_bytes(&master());
    let wrapped = kek.wrap(&id, v1, &material(&MATERIAL)).await.expect("wrap");

    let wrong = LocalKek::from_bytes(&material2());
    let e = wrong.unwrap(&id, v1, &wrapped).await.expect_err("wrong master key");
    assert!(matches!(e, Error::WrongMasterKey { ref kek_id, .. } if kek_id == "local"), "{e:?}");
    assert!(e.to_string().contains("local"), "names the KEK: {e}");
    assert_error_clean("WrongMasterKey", &e, &[]);

    let renamed = LocalKek::from_bytes(&master()).with_id("next");
    let e = renamed.unwrap(&id, v1, &wrapped).await.expect_err("other KEK id");
    assert!(matches!(e, Error::KekMismatch { .. }), "{e:?}");
    assert_error_clean("KekMismatch", &e, &[]);

    let other = KeyringId::new("other", Purpose::Token).expect("id");
    let e = kek.unwrap(&other, v1, &wrapped).await.expect_err("other keyring");
    assert!(matches!(e, Error::Kek { .. }), "{e:?}");
    assert_error_clean("Kek (other keyring)", &e, &[]);

    let e = kek.unwrap(&id, KeyVersion::new(2).expect("v2"), &wrapped).await.expect_err("other version");
    assert_error_clean("Kek (other version)", &e, &[]);

    // Corrupted or truncated ciphertext, and a forged key check value.
    let mut corrupt: WrappedKey = wrapped.clone();
    corrupt.ciphertext[20] ^= 1;
    let e = kek.unwrap(&id, v1, &corrupt).await.expect_err("corrupt");
    assert_error_clean("Kek (corrupt)", &e, &[]);
    let mut short = wrapped.clone();
    short.ciphertext.truncate(30);
    let e = kek.unwrap(&id, v1, &short).await.expect_err("truncated");
    assert_error_clean("Kek (truncated)", &e, &[]);
    // A "wrapped key" that is really the raw material must not be echoed.
    let mut raw = wrapped.clone();
    raw.ciphertext = MATERIAL.to_vec();
    let e = kek.unwrap(&id, v1, &raw).await.expect_err("raw material as ciphertext");
    assert_error_clean("Kek (raw material)", &e, &[]);
    let mut forged = wrapped;
    forged.key_check = "00".repeat(16);
    let e = kek.unwrap(&id, v1, &forged).await.expect_err("forged check value");
    assert!(matches!(e, Error::WrongMasterKey { .. }), "{e:?}");
    assert_error_clean("WrongMasterKey (forged check)", &e, &[]);
}

#[test]
fn master_key_parsing_errors_do_not_echo_input() {
    let k = master();
    let inputs: Vec<String> = vec![
        STANDARD.encode(&k[..31]),                      // 31 bytes
        STANDARD.encode([&k[..], &[0xA5]].concat()),    // 33 bytes
        STANDARD.encode([&k[..], &k[..]].concat()),     // 64 bytes
        STANDARD_NO_PAD.encode(&k[..16]),               // 16 bytes, no padding
        URL_SAFE.encode(k),                             // wrong alphabet
        k.iter().map(|b| format!("{b:02x}")).collect(), // hex instead of base64
        format!("{} trailing", STANDARD.encode(k)),     // garbage after
        STANDARD.encode(MATERIAL).replace('p', "*"),    // invalid characters
    ];
    for input in &inputs {
        assert!(
            STANDARD.decode(input.trim()).map_or(true, |d| d.len() != 32),
            "fixture {input} must not be a valid master key"
        );
        let e = LocalKek::from_base64(input).expect_err("wrong-length or invalid master key is rejected");
        assert!(matches!(e, Error::InvalidKeyMaterial(_)), "{input}: {e:?}");
        let mut extra = vec![input.clone(), input.trim().to_owned()];
        extra.extend(input.split_whitespace().filter(|w| w.len() >= 12).map(str::to_owned));
        assert_error_clean("LocalKek::from_base64", &e, &extra);
    }
    // Raw slices of the wrong length.
    for len in [0, 16, 31, 33, 64] {
        let bytes: Vec<u8> = k.iter().chain(k.iter()).copied().take(len).collect();
        let e = LocalKek::from_slice(&bytes).expect_err("wrong length");
        assert_error_clean("LocalKek::from_slice", &e, &[]);
        let e = KeyMaterial::from_slice(&bytes).expect_err("wrong length");
        assert!(matches!(e, Error::InvalidKeyMaterial(_)), "{e:?}");
        assert_error_clean("KeyMaterial::from_slice", &e, &[]);
    }
}

#[test]
fn master_key_file_errors_do_not_echo_content() {
    let dir = std::env::temp_dir().join(format!("keywheel-secrets-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let k = master();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("raw31", k[..31].to_vec()),
        ("raw33", [&k[..], &[0xFF]].concat()),
        ("b64-31", STANDARD.encode(&k[..31]).into_bytes()),
        ("hex", k.iter().map(|b| format!("{b:02x}")).collect::<String>().into_bytes()),
    ];
    for (name, content) in &cases {
        let path = dir.join(name);
        std::fs::write(&path, content).expect("write temp file");
        let e = LocalKek::from_file(&path).expect_err("bad master key file");
        let extra = vec![String::from_utf8_lossy(content).into_owned()];
        assert_error_clean(&format!("LocalKek::from_file({name})"), &e, &extra);
    }
    let e = LocalKek::from_file(dir.join("missing")).expect_err("missing file");
    assert_error_clean("LocalKek::from_file(missing)", &e, &[]);
    std::fs::remove_dir_all(&dir).expect("clean up temp dir");

    let e = LocalKek::from_env("KEYWHEEL_TEST_SURELY_UNSET_VARIABLE_9f1c").expect_err("unset variable");
    assert_error_clean("LocalKek::from_env", &e, &[]);
}

#[test]
fn keyring_errors_hold_no_key_bytes() {
    let ctx = Context::field("users", "email", "42");
    let id = keyring_id();
    let ring = Keyring::builder(id.clone())
        .retired_version(Algorithm::Aes256Gcm)
        .version(KeyState::Deprecated, Algorithm::Aes256Gcm, material(&material2()))
        .version(KeyState::Active, Algorithm::Aes256Gcm, material(&MATERIAL))
        .build()
        .expect("valid keyring");
    let value = ring.encrypt(b"plaintext", &ctx).expect("encrypt");
    let mut errors: Vec<(&str, Error)> = Vec::new();

    errors.push(("Decrypt (other context)", ring.decrypt(&value, &Context::empty()).expect_err("context")));
    let mut tampered = value.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    errors.push(("Decrypt (tampered)", ring.decrypt(&tampered, &ctx).expect_err("tampered")));
    let mut retired = value.clone();
    retired[4..8].copy_from_slice(&1u32.to_be_bytes());
    errors.push(("KeyRetired", ring.decrypt(&retired, &ctx).expect_err("retired")));
    let mut unknown = value.clone();
    unknown[4..8].copy_from_slice(&9u32.to_be_bytes());
    errors.push(("UnknownKeyVersion", ring.decrypt(&unknown, &ctx).expect_err("unknown")));
    let mut other_alg = value.clone();
    other_alg[3] = Algorithm::ChaCha20Poly1305.id();
    errors.push(("AlgorithmMismatch", ring.decrypt(&other_alg, &ctx).expect_err("algorithm")));
    errors.push(("WrongValueKind", ring.sign(b"m", &ctx).expect_err("sign with AEAD")));
    errors.push(("Decrypt (other keyring, same material)", {
        let other = Keyring::builder(KeyringId::new("acme", Purpose::Database).expect("id"))
            .retired_version(Algorithm::Aes256Gcm)
            .version(KeyState::Deprecated, Algorithm::Aes256Gcm, material(&material2()))
            .version(KeyState::Active, Algorithm::Aes256Gcm, material(&MATERIAL))
            .build()
            .expect("valid keyring");
        other.decrypt(&value, &ctx).expect_err("other keyring")
    }));

    let pending = Keyring::builder(id.clone())
        .version(KeyState::Pending, Algorithm::Aes256Gcm, material(&MATERIAL))
        .build()
        .expect("valid keyring");
    errors.push(("NoActiveVersion", pending.encrypt(b"x", &ctx).expect_err("no active")));
    let two = Keyring::builder(id.clone())
        .version(KeyState::Active, Algorithm::Aes256Gcm, material(&MATERIAL))
        .version(KeyState::Active, Algorithm::Aes256Gcm, material(&material2()))
        .build();
    errors.push(("InvalidArgument (two actives)", two.expect_err("two actives")));

    let mac = Keyring::builder(id)
        .version(KeyState::Active, Algorithm::HmacSha256, material(&MATERIAL))
        .build()
        .expect("valid keyring");
    let sig = mac.sign(b"message", &ctx).expect("sign");
    errors.push(("Decrypt (bad signature)", mac.verify(b"other", &sig, &ctx).expect_err("bad signature")));
    errors.push(("WrongValueKind (encrypt with HMAC)", mac.encrypt(b"x", &ctx).expect_err("hmac encrypt")));
    errors.push(("WrongValueKind (decrypt signature)", ring.decrypt(&sig, &ctx).expect_err("signature")));

    errors.push((
        "IllegalTransition",
        KeyState::Retired.check_transition(KeyVersion::FIRST, KeyState::Active).expect_err("illegal"),
    ));
    errors.push(("InvalidContext", Context::from_pairs([("a", "1"), ("a", "2")]).expect_err("duplicate")));

    for (what, e) in &errors {
        assert_error_clean(what, e, &[]);
    }
    assert!(errors.iter().any(|(_, e)| matches!(e, Error::Decrypt)));
    assert!(errors.iter().any(|(_, e)| matches!(e, Error::IllegalTransition { .. })));
}

/// Malformed values that carry the key bytes themselves: the format errors
/// describe the value, they never echo it.
#[test]
fn format_errors_do_not_echo_the_value() {
    let ring = Keyring::builder(keyring_id())
        .version(KeyState::Active, Algorithm::Aes256Gcm, material(&MATERIAL))
        .build()
        .expect("valid keyring");
    let ctx = Context::empty();
    let header = [0x6B, 0x77, 0x01, 0x01, 0, 0, 0, 1];
    let inputs: Vec<Vec<u8>> = vec![
        MATERIAL.to_vec(),                                                         // bad magic
        master()[..5].to_vec(),                                                    // truncated below the header
        [&header[..], &master()[..20]].concat(),                                   // truncated body
        [&[0x6B, 0x77, 0x09, 0x01, 0, 0, 0, 1][..], &MATERIAL[..]].concat(),       // format version
        [&[0x6B, 0x77, 0x01, 0xA5, 0, 0, 0, 1][..], &MATERIAL[..]].concat(),       // unknown algorithm
        [&[0x6B, 0x77, 0x01, 0x01, 0, 0, 0, 0][..], &MATERIAL[..]].concat(),       // version 0
        [&[0x6B, 0x77, 0x01, 0x10, 0, 0, 0, 1][..], &MATERIAL[..], &[0]].concat(), // trailing bytes
        format!("kw:v1:{}", STANDARD_NO_PAD.encode(MATERIAL)).into_bytes(),        // base64 of material
        format!("kw:v1:{}", STANDARD.encode(master())).into_bytes(),               // padded base64
        format!("kw:v{}:", STANDARD.encode(master())).into_bytes(),                // garbage version
        format!("kw:v2:{}", STANDARD_NO_PAD.encode([&header[..], &MATERIAL].concat())).into_bytes(), // mismatch
    ];
    let mut kinds = std::collections::HashSet::new();
    for input in &inputs {
        let e = ring.decrypt(input, &ctx).expect_err("malformed");
        if let Error::Format(f) = &e {
            kinds.insert(std::mem::discriminant(f));
        }
        let extra = vec![String::from_utf8_lossy(input).into_owned()];
        assert_error_clean(&format!("decrypt({})", String::from_utf8_lossy(input)), &e, &extra);
        let f = keywheel::parse(input).expect_err("malformed");
        assert_clean_of("FormatError Display", &f.to_string(), &extra);
        assert_clean_of("FormatError Debug", &format!("{f:?}"), &extra);
    }
    assert!(kinds.len() >= 7, "expected most FormatError variants to be exercised, got {}", kinds.len());
}

/// Every RustCrypto dependency that offers `zeroize` support is built with it
/// (their key schedules and hash states are then wiped on drop). `hkdf` has
/// no such feature: its state is an HMAC, wiped through `hmac`'s.
#[test]
fn crypto_dependencies_are_built_with_zeroize() {
    let manifest = include_str!("../Cargo.toml");
    for krate in ["aes-gcm", "chacha20poly1305", "aes-gcm-siv", "sha2", "hmac"] {
        let line = manifest
            .lines()
            .find(|l| l.starts_with(&format!("{krate} = ")))
            .unwrap_or_else(|| panic!("{krate} is a workspace dependency"));
        assert!(line.contains("\"zeroize\""), "{krate} must enable its zeroize feature: {line}");
    }
}
