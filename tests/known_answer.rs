//! Known-answer and interoperability tests for wire format v1 (manual, "Wire format v1"): an
//! independent implementation written from the spec alone (raw `hkdf`, `sha2`,
//! `hmac`, the RustCrypto AEADs and `base64`) must read keywheel's values, and
//! keywheel must read its values, byte for byte.

use keywheel::{Algorithm, Context, Error, KeyMaterial, KeyState, Keyring, KeyringId, Purpose};

/// The independent implementation. Nothing here calls into keywheel.
mod spec {
    use aes_gcm::aead::{Aead, KeyInit, Nonce, Payload};
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD_NO_PAD;
    use hkdf::Hkdf;
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    pub(crate) const AES_256_GCM: u8 = 0x01;
    pub(crate) const CHACHA20_POLY1305: u8 = 0x02;
    pub(crate) const XCHACHA20_POLY1305: u8 = 0x03;
    pub(crate) const AES_256_GCM_SIV: u8 = 0x04;
    pub(crate) const HMAC_SHA256: u8 = 0x10;

    pub(crate) fn nonce_len(alg: u8) -> usize {
        match alg {
            XCHACHA20_POLY1305 => 24,
            HMAC_SHA256 => 0,
            _ => 12,
        }
    }

    /// `u16-BE len(id) ‖ id`.
    fn id_part(keyring: &str) -> Vec<u8> {
        let len = u16::try_from(keyring.len()).expect("keyring id fits u16");
        [&len.to_be_bytes()[..], keyring.as_bytes()].concat()
    }

    /// HKDF-SHA256(salt "keywheel/v1", ikm, info = label ‖ alg ‖ u16 len id ‖ id ‖ u32 version).
    pub(crate) fn derive_key(material: &[u8; 32], alg: u8, keyring: &str, version: u32) -> [u8; 32] {
        let label: &[u8] = if alg == HMAC_SHA256 { b"mac" } else { b"aead" };
        let info = [label, &[alg], &id_part(keyring), &version.to_be_bytes()].concat();
        let mut okm = [0u8; 32];
        Hkdf::<Sha256>::new(Some(b"keywheel/v1"), material)
            .expand(&info, &mut okm)
            .expect("32 bytes is a valid HKDF-SHA256 length");
        okm
    }

    /// Canonical context: sorted by name bytewise, unique names,
    /// `u16 count`, then `u16 len name ‖ name ‖ u32 len value ‖ value`.
    pub(crate) fn encode_context(pairs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut sorted = pairs.to_vec();
        sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        assert!(sorted.windows(2).all(|w| w[0].0 != w[1].0), "names must be unique");
        let mut out = u16::try_from(sorted.len()).expect("count").to_be_bytes().to_vec();
        for (name, value) in sorted {
            out.extend_from_slice(&u16::try_from(name.len()).expect("name len").to_be_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&u32::try_from(value.len()).expect("value len").to_be_bytes());
            out.extend_from_slice(value);
        }
        out
    }

    pub(crate) fn header(alg: u8, version: u32) -> [u8; 8] {
        let v = version.to_be_bytes();
        [0x6B, 0x77, 0x01, alg, v[0], v[1], v[2], v[3]]
    }

    /// AAD = header ‖ u16 len id ‖ id ‖ context encoding.
    pub(crate) fn aad(header: &[u8], keyring: &str, context: &[u8]) -> Vec<u8> {
        [header, &id_part(keyring), context].concat()
    }

    fn seal_with<C: KeyInit + Aead>(key: &[u8; 32], nonce: &[u8], aad: &[u8], msg: &[u8]) -> Vec<u8> {
        let cipher = C::new_from_slice(key).expect("32-byte key");
        let nonce = Nonce::<C>::try_from(nonce).expect("nonce length");
        cipher.encrypt(&nonce, Payload { msg, aad }).expect("seal")
    }

    fn open_with<C: KeyInit + Aead>(key: &[u8; 32], nonce: &[u8], aad: &[u8], msg: &[u8]) -> Result<Vec<u8>, String> {
        let cipher = C::new_from_slice(key).expect("32-byte key");
        let nonce = Nonce::<C>::try_from(nonce).map_err(|_| "nonce length".to_owned())?;
        cipher.decrypt(&nonce, Payload { msg, aad }).map_err(|_| "authentication failed".to_owned())
    }

    /// Raw AEAD: returns ciphertext ‖ tag.
    pub(crate) fn seal_raw(alg: u8, key: &[u8; 32], nonce: &[u8], aad: &[u8], msg: &[u8]) -> Vec<u8> {
        match alg {
            AES_256_GCM => seal_with::<aes_gcm::Aes256Gcm>(key, nonce, aad, msg),
            CHACHA20_POLY1305 => seal_with::<chacha20poly1305::ChaCha20Poly1305>(key, nonce, aad, msg),
            XCHACHA20_POLY1305 => seal_with::<chacha20poly1305::XChaCha20Poly1305>(key, nonce, aad, msg),
            AES_256_GCM_SIV => seal_with::<aes_gcm_siv::Aes256GcmSiv>(key, nonce, aad, msg),
            other => panic!("not an AEAD id: {other:#04x}"),
        }
    }

    fn open_raw(alg: u8, key: &[u8; 32], nonce: &[u8], aad: &[u8], msg: &[u8]) -> Result<Vec<u8>, String> {
        match alg {
            AES_256_GCM => open_with::<aes_gcm::Aes256Gcm>(key, nonce, aad, msg),
            CHACHA20_POLY1305 => open_with::<chacha20poly1305::ChaCha20Poly1305>(key, nonce, aad, msg),
            XCHACHA20_POLY1305 => open_with::<chacha20poly1305::XChaCha20Poly1305>(key, nonce, aad, msg),
            AES_256_GCM_SIV => open_with::<aes_gcm_siv::Aes256GcmSiv>(key, nonce, aad, msg),
            other => Err(format!("not an AEAD id: {other:#04x}")),
        }
    }

    /// A binary value: header ‖ nonce ‖ ciphertext ‖ tag.
    pub(crate) fn encrypt(
        material: &[u8; 32],
        alg: u8,
        keyring: &str,
        version: u32,
        context: &[u8],
        nonce: &[u8],
        plaintext: &[u8],
    ) -> Vec<u8> {
        assert_eq!(nonce.len(), nonce_len(alg), "nonce length for {alg:#04x}");
        let header = header(alg, version);
        let key = derive_key(material, alg, keyring, version);
        let body = seal_raw(alg, &key, nonce, &aad(&header, keyring, context), plaintext);
        [&header[..], nonce, &body].concat()
    }

    /// `kw:v{N}:` ‖ base64 standard without padding of the binary form.
    pub(crate) fn to_text(binary: &[u8]) -> String {
        let version = u32::from_be_bytes(binary[4..8].try_into().expect("header"));
        format!("kw:v{version}:{}", STANDARD_NO_PAD.encode(binary))
    }

    /// The binary form of a binary or text value.
    pub(crate) fn to_binary(value: &[u8]) -> Result<Vec<u8>, String> {
        let Some(rest) = value.strip_prefix(b"kw:v") else {
            return Ok(value.to_vec());
        };
        let colon = rest.iter().position(|&b| b == b':').ok_or("no colon")?;
        let digits = std::str::from_utf8(&rest[..colon]).map_err(|e| e.to_string())?;
        let text_version: u32 = digits.parse().map_err(|_| "bad version digits".to_owned())?;
        let binary = STANDARD_NO_PAD.decode(&rest[colon + 1..]).map_err(|e| e.to_string())?;
        if binary.len() < 8 || u32::from_be_bytes(binary[4..8].try_into().expect("4 bytes")) != text_version {
            return Err("text and binary versions disagree".into());
        }
        Ok(binary)
    }

    /// Decrypt a binary or text value; returns (algorithm id, version, plaintext).
    pub(crate) fn decrypt(
        material: &[u8; 32],
        keyring: &str,
        context: &[u8],
        value: &[u8],
    ) -> Result<(u8, u32, Vec<u8>), String> {
        let binary = to_binary(value)?;
        if binary.len() < 8 || binary[..3] != [0x6B, 0x77, 0x01] {
            return Err("bad header".into());
        }
        let alg = binary[3];
        let version = u32::from_be_bytes(binary[4..8].try_into().expect("4 bytes"));
        let n = nonce_len(alg);
        if version == 0 || binary.len() < 8 + n + 16 {
            return Err("bad version or truncated".into());
        }
        let key = derive_key(material, alg, keyring, version);
        let plaintext = open_raw(alg, &key, &binary[8..8 + n], &aad(&binary[..8], keyring, context), &binary[8 + n..])?;
        Ok((alg, version, plaintext))
    }

    /// HMAC-SHA256 signature: header ‖ HMAC(header ‖ u16 len id ‖ id ‖ context ‖ message).
    pub(crate) fn sign(material: &[u8; 32], keyring: &str, version: u32, context: &[u8], message: &[u8]) -> Vec<u8> {
        let header = header(HMAC_SHA256, version);
        let key = derive_key(material, HMAC_SHA256, keyring, version);
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).expect("any key length");
        mac.update(&aad(&header, keyring, context));
        mac.update(message);
        [&header[..], &mac.finalize().into_bytes()[..]].concat()
    }

    /// Verify a signature with raw `hmac` (constant-time `verify_slice`).
    pub(crate) fn verify(material: &[u8; 32], keyring: &str, context: &[u8], message: &[u8], signature: &[u8]) -> bool {
        if signature.len() != 8 + 32 || signature[..4] != [0x6B, 0x77, 0x01, HMAC_SHA256] {
            return false;
        }
        let version = u32::from_be_bytes(signature[4..8].try_into().expect("4 bytes"));
        let key = derive_key(material, HMAC_SHA256, keyring, version);
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).expect("any key length");
        mac.update(&aad(&signature[..8], keyring, context));
        mac.update(message);
        mac.verify_slice(&signature[8..]).is_ok()
    }
}

// ---------------------------------------------------------------------------
// Fixtures

/// Material 0x00..0x1f (the KAT material).
fn kat_material() -> [u8; 32] {
    std::array::from_fn(|i| i as u8)
}

/// Other material for earlier versions, so a wrong version choice cannot pass.
fn old_material(seed: u8) -> [u8; 32] {
    std::array::from_fn(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn fixed_nonce(alg: u8) -> Vec<u8> {
    (1..=spec::nonce_len(alg) as u8).collect()
}

fn algorithm(id: u8) -> Algorithm {
    Algorithm::from_id(id).expect("registered algorithm id")
}

const AEAD_IDS: [u8; 4] = [spec::AES_256_GCM, spec::CHACHA20_POLY1305, spec::XCHACHA20_POLY1305, spec::AES_256_GCM_SIV];

/// Two keyring ids: the KAT one, and one whose canonical form has multi-byte
/// UTF-8 (so byte length ≠ char length) and a custom purpose.
fn keyring_ids() -> Vec<(KeyringId, &'static str)> {
    vec![
        (KeyringId::new("acme", Purpose::Token).expect("valid id"), "acme/token"),
        (
            KeyringId::new("zürich-€", Purpose::Custom("billing export".into())).expect("valid id"),
            "zürich-€/billing export",
        ),
    ]
}

/// A keyring whose version 3 is Active with `material`: v1 Retired, v2
/// Deprecated (other material), v4 Pending (other material).
fn ring(id: &KeyringId, alg: Algorithm, material: &[u8; 32]) -> Keyring {
    Keyring::builder(id.clone())
        .retired_version(alg)
        .version(KeyState::Deprecated, alg, KeyMaterial::from_slice(&old_material(2)).expect("32 bytes"))
        .version(KeyState::Active, alg, KeyMaterial::from_slice(material).expect("32 bytes"))
        .version(KeyState::Pending, alg, KeyMaterial::from_slice(&old_material(4)).expect("32 bytes"))
        .build()
        .expect("valid keyring")
}

struct Ctx {
    name: &'static str,
    keywheel: Context,
    spec: Vec<u8>,
}

/// The contexts the interop matrix runs over.
fn contexts() -> Vec<Ctx> {
    let big = vec![0xC3u8; 1000];
    let custom: Vec<(&str, &[u8])> = vec![
        ("zeta", b"last"),
        ("Zeta", b"upper case sorts before lower case"),
        ("alpha", b""),
        ("\u{e9}t\u{e9}", &[0x00, 0xFF, 0x80, 0x7F]),
        ("tenant_row", b"acme:42"),
    ];
    let with_big: Vec<(&str, &[u8])> = vec![("blob", &big), ("a", b"1")];
    vec![
        Ctx {
            name: "field users/email/42",
            keywheel: Context::field("users", "email", "42"),
            spec: spec::encode_context(&[("table", b"users"), ("column", b"email"), ("row", b"42")]),
        },
        Ctx {
            name: "custom five pairs",
            keywheel: Context::from_pairs(custom.iter().copied()).expect("valid context"),
            spec: spec::encode_context(&custom),
        },
        Ctx {
            name: "1000-byte value",
            keywheel: Context::from_pairs(with_big.iter().copied()).expect("valid context"),
            spec: spec::encode_context(&with_big),
        },
        Ctx { name: "empty", keywheel: Context::empty(), spec: spec::encode_context(&[]) },
    ]
}

const PLAINTEXTS: [&[u8]; 3] = [b"", b"hello keywheel", &[0xA5; 300]];

// ---------------------------------------------------------------------------
// The pinned known-answer vector

const KAT_KEYRING: &str = "acme/token";
const KAT_PLAINTEXT: &[u8] = b"hello keywheel";
/// HKDF-SHA256 output for material 00..1f, AES-256-GCM, "acme/token", version 1.
/// These three constants were cross-checked with a third implementation
/// (Python `hmac`/`hashlib` HKDF and `cryptography`'s AESGCM).
const KAT_DERIVED_KEY_HEX: &str = "7f573b903b2007250e1f20b211de042d5b86c37eeae6d04c1b4c206f6e7eea96";
/// The whole binary value (header ‖ nonce 01..0c ‖ ciphertext ‖ tag).
const KAT_VALUE_HEX: &str = concat!(
    "6b77010100000001",                 // magic "kw", format 1, AES-256-GCM, version 1
    "0102030405060708090a0b0c",         // nonce
    "11313ec7c97ff2fb07a9aa332a30",     // ciphertext of "hello keywheel"
    "bd974cb2723222bd65c1caa35d1f1f9e", // tag
);
/// Its text form.
const KAT_TEXT: &str = "kw:v1:a3cBAQAAAAEBAgMEBQYHCAkKCwwRMT7HyX/y+wepqjMqML2XTLJyMiK9ZcHKo10fH54";

fn kat_nonce() -> [u8; 12] {
    std::array::from_fn(|i| i as u8 + 1)
}

fn kat_context_encoding() -> Vec<u8> {
    spec::encode_context(&[("table", b"users"), ("column", b"email"), ("row", b"42")])
}

#[test]
fn kat_independent_implementation_matches_pinned_vector() {
    let key = spec::derive_key(&kat_material(), spec::AES_256_GCM, KAT_KEYRING, 1);
    let value = spec::encrypt(
        &kat_material(),
        spec::AES_256_GCM,
        KAT_KEYRING,
        1,
        &kat_context_encoding(),
        &kat_nonce(),
        KAT_PLAINTEXT,
    );
    let text = spec::to_text(&value);
    assert_eq!(hex(&key), KAT_DERIVED_KEY_HEX, "derived key drifted");
    assert_eq!(hex(&value), KAT_VALUE_HEX, "independent implementation drifted");
    assert_eq!(text, KAT_TEXT, "text form drifted");
    // Layout: header ‖ nonce ‖ 14 bytes ciphertext ‖ 16 bytes tag.
    assert_eq!(value.len(), 8 + 12 + KAT_PLAINTEXT.len() + 16);
    assert_eq!(&value[..8], &[0x6B, 0x77, 0x01, 0x01, 0, 0, 0, 1]);
    assert_eq!(&value[8..20], &kat_nonce());
}

#[test]
fn kat_keywheel_decrypts_pinned_vector() {
    let id = KeyringId::new("acme", Purpose::Token).expect("valid id");
    assert_eq!(id.canonical(), KAT_KEYRING);
    let ring = Keyring::builder(id)
        .version(KeyState::Active, Algorithm::Aes256Gcm, KeyMaterial::from_slice(&kat_material()).expect("32 bytes"))
        .build()
        .expect("valid keyring");
    let ctx = Context::field("users", "email", "42");
    let value: Vec<u8> = (0..KAT_VALUE_HEX.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&KAT_VALUE_HEX[i..i + 2], 16).expect("hex"))
        .collect();
    assert_eq!(&ring.decrypt(&value, &ctx).expect("keywheel reads the pinned vector")[..], KAT_PLAINTEXT);
    assert_eq!(&ring.decrypt(KAT_TEXT.as_bytes(), &ctx).expect("keywheel reads the pinned text")[..], KAT_PLAINTEXT);
    let info = keywheel::parse(KAT_TEXT.as_bytes()).expect("parse");
    assert_eq!((info.version.get(), info.algorithm, info.payload_len), (1, Algorithm::Aes256Gcm, KAT_PLAINTEXT.len()));
    // Any other context, keyring or material rejects it.
    assert!(matches!(ring.decrypt(&value, &Context::field("users", "email", "43")), Err(Error::Decrypt)));
}

// ---------------------------------------------------------------------------
// Interoperability matrix

#[test]
fn context_encoding_matches_spec() {
    for ctx in contexts() {
        assert_eq!(ctx.keywheel.encoded().expect("valid"), ctx.spec.as_slice(), "context {}", ctx.name);
    }
    assert_eq!(spec::encode_context(&[]), [0, 0]);
}

#[test]
fn keywheel_decrypts_independent_values_all_algorithms_and_forms() {
    let material = kat_material();
    let mut checked = 0;
    for (id, canonical) in keyring_ids() {
        for alg_id in AEAD_IDS {
            let ring = ring(&id, algorithm(alg_id), &material);
            for ctx in contexts() {
                for plaintext in PLAINTEXTS {
                    let nonce = fixed_nonce(alg_id);
                    let binary = spec::encrypt(&material, alg_id, canonical, 3, &ctx.spec, &nonce, plaintext);
                    let text = spec::to_text(&binary);
                    assert!(text.starts_with("kw:v3:"), "{text}");
                    for (form, value) in [("binary", binary.clone()), ("text", text.into_bytes())] {
                        let what = format!("{canonical} alg {alg_id:#04x} {form} ctx {}", ctx.name);
                        let out = ring.decrypt(&value, &ctx.keywheel).unwrap_or_else(|e| panic!("{what}: {e}"));
                        assert_eq!(&out[..], plaintext, "{what}");
                        assert_eq!(keywheel::version_of(&value).expect("parse").get(), 3, "{what}");
                        checked += 1;
                    }
                    // The Deprecated version 2 (its own material) still reads.
                    let v2 = spec::encrypt(&old_material(2), alg_id, canonical, 2, &ctx.spec, &nonce, plaintext);
                    assert_eq!(&ring.decrypt(&v2, &ctx.keywheel).expect("deprecated v2 reads")[..], plaintext);
                    // Version 3 value sealed under the v2 material: wrong key, must fail.
                    let wrong = spec::encrypt(&old_material(2), alg_id, canonical, 3, &ctx.spec, &nonce, plaintext);
                    assert!(matches!(ring.decrypt(&wrong, &ctx.keywheel), Err(Error::Decrypt)));
                }
            }
        }
    }
    assert_eq!(checked, 2 * 4 * 4 * 3 * 2);
}

#[test]
fn independent_implementation_decrypts_keywheel_values_byte_exact() {
    let material = kat_material();
    for (id, canonical) in keyring_ids() {
        for alg_id in AEAD_IDS {
            let ring = ring(&id, algorithm(alg_id), &material);
            let n = spec::nonce_len(alg_id);
            for ctx in contexts() {
                for plaintext in PLAINTEXTS {
                    let what = format!("{canonical} alg {alg_id:#04x} ctx {}", ctx.name);
                    let binary = ring.encrypt(plaintext, &ctx.keywheel).expect("encrypt");
                    assert_eq!(binary.len(), 8 + n + plaintext.len() + 16, "{what}");
                    assert_eq!(&binary[..8], &spec::header(alg_id, 3), "{what}");
                    let (alg, version, out) = spec::decrypt(&material, canonical, &ctx.spec, &binary)
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_eq!((alg, version, out.as_slice()), (alg_id, 3, plaintext), "{what}");
                    // Same nonce ⇒ the independent implementation produces the very same bytes.
                    let again = spec::encrypt(&material, alg_id, canonical, 3, &ctx.spec, &binary[8..8 + n], plaintext);
                    assert_eq!(hex(&again), hex(&binary), "{what}");

                    let text = ring.encrypt_text(plaintext, &ctx.keywheel).expect("encrypt_text");
                    let bin_of_text = spec::to_binary(text.as_bytes()).expect("text form decodes");
                    assert_eq!(spec::to_text(&bin_of_text), text, "{what}: text form is kw:v3: + base64 no pad");
                    assert!(!text.ends_with('='), "{what}: no padding");
                    let (alg, version, out) = spec::decrypt(&material, canonical, &ctx.spec, text.as_bytes())
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_eq!((alg, version, out.as_slice()), (alg_id, 3, plaintext), "{what}");
                    // Bound to the context and keyring: the spec impl rejects other bindings too.
                    assert!(
                        spec::decrypt(&material, canonical, &spec::encode_context(&[("x", b"y")]), &binary).is_err()
                    );
                    assert!(spec::decrypt(&material, "acme/other", &ctx.spec, &binary).is_err());
                }
            }
        }
    }
}

#[test]
fn spec_key_derivation_uses_version_algorithm_and_keyring() {
    let m = kat_material();
    let base = spec::derive_key(&m, spec::AES_256_GCM, KAT_KEYRING, 1);
    assert_ne!(base, spec::derive_key(&m, spec::AES_256_GCM, KAT_KEYRING, 2));
    assert_ne!(base, spec::derive_key(&m, spec::CHACHA20_POLY1305, KAT_KEYRING, 1));
    assert_ne!(base, spec::derive_key(&m, spec::AES_256_GCM, "acme/database", 1));
    assert_ne!(&base, &m, "keys are derived, never raw");
    // Keywheel agrees that the raw material is NOT the key: a value sealed with
    // the raw material as key is rejected.
    let ring = ring(&KeyringId::new("acme", Purpose::Token).expect("id"), Algorithm::Aes256Gcm, &m);
    let ctx = kat_context_encoding();
    let header = spec::header(spec::AES_256_GCM, 3);
    let nonce = fixed_nonce(spec::AES_256_GCM);
    let body = spec::seal_raw(spec::AES_256_GCM, &m, &nonce, &spec::aad(&header, KAT_KEYRING, &ctx), b"raw");
    let value = [&header[..], &nonce, &body].concat();
    assert!(matches!(ring.decrypt(&value, &Context::field("users", "email", "42")), Err(Error::Decrypt)));
}

// ---------------------------------------------------------------------------
// The header is authenticated

#[test]
fn flipping_algorithm_or_version_byte_fails() {
    let material = kat_material();
    let id = KeyringId::new("acme", Purpose::Token).expect("id");
    let ctx = Context::field("users", "email", "42");
    for alg_id in AEAD_IDS {
        let ring = ring(&id, algorithm(alg_id), &material);
        let value = ring.encrypt(b"secret", &ctx).expect("encrypt");
        for other_alg in [0x01, 0x02, 0x03, 0x04, 0x10, 0x00, 0x05, 0xFF] {
            if other_alg == alg_id {
                continue;
            }
            let mut bad = value.clone();
            bad[3] = other_alg;
            assert!(ring.decrypt(&bad, &ctx).is_err(), "alg {alg_id:#04x} -> {other_alg:#04x}");
        }
        // Versions 2 (Deprecated) and 4 (Pending) are live and readable; 1 is retired, 5 unknown, 0 invalid.
        for version in [0u32, 1, 2, 4, 5, 0x0100_0003, u32::MAX] {
            let mut bad = value.clone();
            bad[4..8].copy_from_slice(&version.to_be_bytes());
            assert!(ring.decrypt(&bad, &ctx).is_err(), "alg {alg_id:#04x} v3 -> v{version}");
        }
        let mut bad = value.clone();
        bad[2] = 0x02;
        assert!(ring.decrypt(&bad, &ctx).is_err(), "format byte");
    }
}

/// The header enters the AAD: a value whose body was sealed with the right key
/// but an AAD with a different (or no) header must not decrypt. This separates
/// "the header is authenticated" from "the version selects the key".
#[test]
fn header_is_part_of_the_associated_data() {
    let material = kat_material();
    let (id, canonical) = keyring_ids().remove(0);
    let ctx = Context::field("users", "email", "42");
    let ctx_spec = kat_context_encoding();
    for alg_id in AEAD_IDS {
        let ring = ring(&id, algorithm(alg_id), &material);
        let key = spec::derive_key(&material, alg_id, canonical, 3);
        let nonce = fixed_nonce(alg_id);
        let header = spec::header(alg_id, 3);
        let seal_with_aad = |aad: &[u8]| {
            let body = spec::seal_raw(alg_id, &key, &nonce, aad, b"payload");
            [&header[..], &nonce, &body].concat()
        };
        // Control: the right AAD decrypts.
        let good = seal_with_aad(&spec::aad(&header, canonical, &ctx_spec));
        assert_eq!(&ring.decrypt(&good, &ctx).expect("control")[..], b"payload");
        // AAD without the header.
        let headerless = seal_with_aad(&spec::aad(&[], canonical, &ctx_spec));
        assert!(matches!(ring.decrypt(&headerless, &ctx), Err(Error::Decrypt)), "alg {alg_id:#04x}: no header in AAD");
        // AAD with another version / algorithm in the header (same key).
        for other in [spec::header(alg_id, 2), spec::header(alg_id ^ 0x07, 3), spec::header(alg_id, 0x0300)] {
            let v = seal_with_aad(&spec::aad(&other, canonical, &ctx_spec));
            assert!(matches!(ring.decrypt(&v, &ctx), Err(Error::Decrypt)), "alg {alg_id:#04x}: AAD header {other:?}");
        }
        // AAD without the keyring length prefix.
        let no_len = seal_with_aad(&[&header[..], canonical.as_bytes(), &ctx_spec].concat());
        assert!(matches!(ring.decrypt(&no_len, &ctx), Err(Error::Decrypt)), "alg {alg_id:#04x}: no id length");
    }
}

// ---------------------------------------------------------------------------
// HMAC-SHA256 signatures

#[test]
fn hmac_signature_layout_matches_spec() {
    let material = kat_material();
    for (id, canonical) in keyring_ids() {
        let ring = ring(&id, Algorithm::HmacSha256, &material);
        for ctx in contexts() {
            for message in PLAINTEXTS {
                let what = format!("{canonical} ctx {}", ctx.name);
                let sig = ring.sign(message, &ctx.keywheel).expect("sign");
                assert_eq!(sig.len(), 40, "{what}");
                assert_eq!(&sig[..8], &spec::header(spec::HMAC_SHA256, 3), "{what}");
                assert!(spec::verify(&material, canonical, &ctx.spec, message, &sig), "{what}: raw hmac verifies");
                // HMAC is deterministic: byte-identical to the independent signature.
                let independent = spec::sign(&material, canonical, 3, &ctx.spec, message);
                assert_eq!(hex(&independent), hex(&sig), "{what}");
                ring.verify(message, &independent, &ctx.keywheel).expect("keywheel verifies the independent signature");
                // Text form of a signature also verifies.
                ring.verify(message, spec::to_text(&independent).as_bytes(), &ctx.keywheel).expect("text signature");
                assert!(!spec::verify(&material, canonical, &ctx.spec, b"other message", &sig), "{what}");
                assert!(ring.verify(b"other message", &sig, &ctx.keywheel).is_err(), "{what}");
            }
        }
        // A signature whose header says v2 is checked with v2's key.
        let v2 = spec::sign(&old_material(2), canonical, 2, &kat_context_encoding(), b"m");
        ring.verify(b"m", &v2, &Context::field("users", "email", "42")).expect("deprecated v2 verifies");
        let mut flipped = v2;
        flipped[7] = 3;
        assert!(ring.verify(b"m", &flipped, &Context::field("users", "email", "42")).is_err());
    }
}

#[test]
fn hmac_key_uses_mac_label() {
    // The mac key differs from an AEAD key of the same inputs (label and id byte).
    let m = kat_material();
    assert_ne!(
        spec::derive_key(&m, spec::HMAC_SHA256, KAT_KEYRING, 1),
        spec::derive_key(&m, spec::AES_256_GCM, KAT_KEYRING, 1)
    );
    let ring = Keyring::builder(KeyringId::new("acme", Purpose::Token).expect("id"))
        .version(KeyState::Active, Algorithm::HmacSha256, KeyMaterial::from_slice(&m).expect("32 bytes"))
        .build()
        .expect("valid keyring");
    let ctx = Context::empty();
    let sig = ring.sign(b"GET /", &ctx).expect("sign");
    assert_eq!(hex(&sig), hex(&spec::sign(&m, KAT_KEYRING, 1, &[0, 0], b"GET /")));
}
