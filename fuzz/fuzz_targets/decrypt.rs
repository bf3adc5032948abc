//! Fuzz target `decrypt`: [`Keyring::decrypt`], [`Keyring::verify`] and
//! [`Keyring::needs_rotation`] must never panic, and must agree with the
//! parser and with each other.
//!
//! The keyring (built once) mixes states and algorithms:
//!
//! | version | state      | algorithm          |
//! |---------|------------|--------------------|
//! | 1       | Retired    | AES-256-GCM        |
//! | 2       | Deprecated | ChaCha20-Poly1305  |
//! | 3       | Deprecated | HMAC-SHA256        |
//! | 4       | Deprecated | AES-256-GCM-SIV    |
//! | 5       | Active     | AES-256-GCM        |
//! | 6       | Pending    | XChaCha20-Poly1305 |
//!
//! Each input is used three ways:
//! 1. as is (mostly stopped by the header checks);
//! 2. behind a valid header chosen by its first byte (bits 0–2: version 0–7,
//!    bit 3: use a wrong algorithm, bits 4–6: which one, bit 7: text form), so
//!    the cipher paths see arbitrary nonces, ciphertexts and tags;
//! 3. as a plaintext: written under the version picked by its first byte by a
//!    "writer" snapshot with the same material, then it must decrypt (or
//!    verify) in the main ring exactly when that version is readable, must
//!    fail under another context, must fail after any one-bit flip, and must
//!    re-encrypt to the Active version.
#![no_main]

use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use keywheel_core::{
    Algorithm, Context, Error, FormatError, KeyMaterial, KeyState, KeyVersion, Keyring, KeyringId, Purpose, parse,
};
use libfuzzer_sys::fuzz_target;

/// Versions 1..=6 of the fixture keyring.
const VERSIONS: [(KeyState, Algorithm); 6] = [
    (KeyState::Retired, Algorithm::Aes256Gcm),
    (KeyState::Deprecated, Algorithm::ChaCha20Poly1305),
    (KeyState::Deprecated, Algorithm::HmacSha256),
    (KeyState::Deprecated, Algorithm::Aes256GcmSiv),
    (KeyState::Active, Algorithm::Aes256Gcm),
    (KeyState::Pending, Algorithm::XChaCha20Poly1305),
];

/// The message that signatures are verified against.
const MESSAGE: &[u8] = b"GET /v1/users/12345";

struct Fixture {
    ring: Keyring,
    /// `writers[i]` has version `i + 1` Active (same material), earlier ones retired.
    writers: Vec<Keyring>,
    ctx: Context,
    other_ctx: Context,
}

fn material(version: usize) -> KeyMaterial {
    let byte = u8::try_from(version).expect("few versions").wrapping_mul(0x3b) ^ 0xa5;
    KeyMaterial::from_slice(&[byte; 32]).expect("32 bytes")
}

fn id() -> KeyringId {
    KeyringId::new("fuzz-tenant", Purpose::Database).expect("valid id")
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let mut builder = Keyring::builder(id());
    for (i, &(state, alg)) in VERSIONS.iter().enumerate() {
        builder = match state {
            KeyState::Retired => builder.retired_version(alg),
            _ => builder.version(state, alg, material(i + 1)),
        };
    }
    let ring = builder.build().expect("valid fixture keyring");
    let writers = (0..VERSIONS.len())
        .map(|w| {
            let mut b = Keyring::builder(id());
            for &(_, alg) in &VERSIONS[..w] {
                b = b.retired_version(alg);
            }
            b.version(KeyState::Active, VERSIONS[w].1, material(w + 1)).build().expect("valid writer keyring")
        })
        .collect();
    Fixture {
        ring,
        writers,
        ctx: Context::field("users", "email", "12345"),
        other_ctx: Context::field("users", "email", "12346"),
    }
});

fuzz_target!(|data: &[u8]| {
    let f = &*FIXTURE;
    exercise(f, data);
    if let Some((&selector, rest)) = data.split_first() {
        let value = with_header(selector, rest);
        if selector & 0x80 == 0 {
            exercise(f, &value);
        } else {
            exercise(f, text_form(&value).as_bytes());
        }
        round_trip(f, selector, rest);
    }
});

/// `selector` picks the header put in front of `rest` (see the module docs).
fn with_header(selector: u8, rest: &[u8]) -> Vec<u8> {
    let version = u32::from(selector & 0x07);
    let algorithm = if selector & 0x08 != 0 {
        Algorithm::ALL[usize::from((selector >> 4) & 0x07) % Algorithm::ALL.len()]
    } else {
        slot(version).map_or(Algorithm::Aes256Gcm, |(_, alg)| alg)
    };
    let mut value = vec![b'k', b'w', 0x01, algorithm.id()];
    value.extend_from_slice(&version.to_be_bytes());
    value.extend_from_slice(rest);
    value
}

/// `kw:v{N}:{base64}` using the version bytes of the header as they are (even 0).
fn text_form(binary: &[u8]) -> String {
    let version = u32::from_be_bytes([binary[4], binary[5], binary[6], binary[7]]);
    let mut text = format!("kw:v{version}:");
    STANDARD_NO_PAD.encode_string(binary, &mut text);
    text
}

fn slot(version: u32) -> Option<(KeyState, Algorithm)> {
    let index = usize::try_from(version).ok()?.checked_sub(1)?;
    VERSIONS.get(index).copied()
}

/// Decrypt, verify and classify one value; check the answers against the parser.
fn exercise(f: &Fixture, value: &[u8]) {
    let parsed = parse(value);
    let decrypted = f.ring.decrypt(value, &f.ctx);
    let verified = f.ring.verify(MESSAGE, value, &f.ctx);
    let needs_rotation = f.ring.needs_rotation(value);

    let info = match parsed {
        Err(e) => {
            assert!(is_format(&decrypted, &e), "decrypt of a malformed value: {decrypted:?}, parser says {e:?}");
            assert!(is_format(&verified, &e), "verify of a malformed value: {verified:?}, parser says {e:?}");
            assert!(is_format(&needs_rotation, &e), "needs_rotation of a malformed value: {needs_rotation:?}");
            return;
        }
        Ok(info) => info,
    };
    let version = info.version;
    assert_eq!(
        needs_rotation.expect("needs_rotation reads any well-formed value"),
        f.ring.active_version() != Some(version)
    );
    if info.algorithm == Algorithm::BlindIndex {
        // A blind index tag is neither decrypted nor verified, whatever its version.
        assert!(matches!(decrypted, Err(Error::WrongValueKind(_))), "decrypt of a blind index tag: {decrypted:?}");
        assert!(matches!(verified, Err(Error::WrongValueKind(_))), "verify of a blind index tag: {verified:?}");
        return;
    }
    let readable = match slot(version.get()) {
        None => {
            if info.algorithm.is_aead() {
                assert!(matches!(decrypted, Err(Error::UnknownKeyVersion { version: v }) if v == version));
            } else {
                assert!(matches!(verified, Err(Error::UnknownKeyVersion { version: v }) if v == version));
            }
            false
        }
        Some((KeyState::Retired, _)) => {
            if info.algorithm.is_aead() {
                assert!(matches!(decrypted, Err(Error::KeyRetired { version: v }) if v == version));
            } else {
                assert!(matches!(verified, Err(Error::KeyRetired { version: v }) if v == version));
            }
            false
        }
        Some((_, alg)) => alg == info.algorithm,
    };
    if info.algorithm.is_aead() {
        assert!(matches!(verified, Err(Error::WrongValueKind(_))), "verify of an AEAD value: {verified:?}");
    } else {
        assert!(matches!(decrypted, Err(Error::WrongValueKind(_))), "decrypt of a signature: {decrypted:?}");
    }
    if let Ok(plaintext) = &decrypted {
        assert!(readable, "decrypted under an unreadable version {version}");
        assert_eq!(plaintext.len(), info.payload_len);
        assert!(f.ring.decrypt(value, &f.other_ctx).is_err(), "decrypted under another context");
    }
    if verified.is_ok() {
        assert!(readable, "verified under an unreadable version {version}");
        assert!(f.ring.verify(MESSAGE, value, &f.other_ctx).is_err(), "verified under another context");
    }
}

fn is_format<T>(result: &Result<T, Error>, expected: &FormatError) -> bool {
    matches!(result, Err(Error::Format(e)) if e == expected)
}

/// Write `plaintext` under the version picked by `selector` and read it back.
fn round_trip(f: &Fixture, selector: u8, plaintext: &[u8]) {
    let index = usize::from(selector) % VERSIONS.len();
    let (state, alg) = VERSIONS[index];
    let version = KeyVersion::new(u32::try_from(index + 1).expect("few versions")).expect("nonzero");
    let writer = &f.writers[index];
    let value = if alg.is_aead() {
        let value = if selector & 0x80 == 0 {
            writer.encrypt(plaintext, &f.ctx).expect("encrypt")
        } else {
            writer.encrypt_text(plaintext, &f.ctx).expect("encrypt_text").into_bytes()
        };
        let result = f.ring.decrypt(&value, &f.ctx);
        if state == KeyState::Retired {
            assert!(matches!(result, Err(Error::KeyRetired { .. })), "retired version decrypted: {result:?}");
            return;
        }
        assert_eq!(&result.expect("decrypt a value of a readable version")[..], plaintext);
        assert!(matches!(f.ring.decrypt(&value, &f.other_ctx), Err(Error::Decrypt)));
        let rotated = f.ring.reencrypt(&value, &f.ctx).expect("reencrypt");
        assert_eq!(parse(&rotated).expect("own output parses").version, f.ring.active_version().expect("active"));
        assert_eq!(parse(&rotated).map(|i| i.form), parse(&value).map(|i| i.form), "reencrypt keeps the form");
        assert!(!f.ring.needs_rotation(&rotated).expect("parses"));
        assert_eq!(&f.ring.decrypt(&rotated, &f.ctx).expect("decrypt rotated")[..], plaintext);
        value
    } else {
        let signature = writer.sign(plaintext, &f.ctx).expect("sign");
        f.ring.verify(plaintext, &signature, &f.ctx).expect("verify own signature");
        assert!(matches!(f.ring.verify(plaintext, &signature, &f.other_ctx), Err(Error::Decrypt)));
        signature
    };
    assert_eq!(parse(&value).expect("own output parses").version, version);
    assert_eq!(f.ring.needs_rotation(&value).expect("parses"), f.ring.active_version() != Some(version));

    // Any single bit flip must be rejected.
    let position = plaintext.iter().fold(usize::from(selector), |acc, &b| acc.wrapping_mul(31).wrapping_add(b.into()));
    let mut tampered = value;
    let bit = position % (tampered.len() * 8);
    tampered[bit / 8] ^= 1 << (bit % 8);
    if alg.is_aead() {
        assert!(f.ring.decrypt(&tampered, &f.ctx).is_err(), "a tampered value decrypted (bit {bit})");
    } else {
        assert!(f.ring.verify(plaintext, &tampered, &f.ctx).is_err(), "a tampered signature verified (bit {bit})");
    }
}
