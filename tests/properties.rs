//! Property tests of the keyring hot path and the wire parser: round trips for
//! every AEAD in both forms, tamper detection bit by bit, context / keyring /
//! tenant binding, and a parser that never panics.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use keywheel::{Algorithm, Context, Error, Form, KeyMaterial, KeyState, Keyring, KeyringId, Purpose};
use proptest::prelude::*;
use proptest::sample::{Index, select};

// ---------------------------------------------------------------------------
// Strategies and helpers

fn aead() -> impl Strategy<Value = Algorithm> {
    select(Algorithm::AEAD.to_vec())
}

/// Mostly small fields, sometimes up to 64 KiB.
fn plaintext() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => prop::collection::vec(any::<u8>(), 0..=300),
        1 => prop::collection::vec(any::<u8>(), 0..=64 * 1024),
    ]
}

/// 0..5 pairs with unique arbitrary (Unicode, possibly empty) names and arbitrary byte values.
fn pairs() -> impl Strategy<Value = BTreeMap<String, Vec<u8>>> {
    prop::collection::btree_map("\\PC{0,12}", prop::collection::vec(any::<u8>(), 0..48), 0..5)
}

fn context_of(pairs: &BTreeMap<String, Vec<u8>>) -> Context {
    Context::from_pairs(pairs.iter().map(|(n, v)| (n.as_str(), v.as_slice()))).expect("unique names")
}

/// A valid keyring-id part: 1..=24 chars, no '/', no control characters.
fn id_part() -> impl Strategy<Value = String> {
    "[^/\\p{Cc}]{1,24}"
}

fn purpose() -> impl Strategy<Value = Purpose> {
    prop_oneof![
        Just(Purpose::Token),
        Just(Purpose::Database),
        Just(Purpose::File),
        Just(Purpose::Session),
        Just(Purpose::ApiSignature),
        id_part().prop_map(Purpose::Custom),
    ]
}

fn keyring_id() -> impl Strategy<Value = KeyringId> {
    (id_part(), purpose()).prop_map(|(tenant, purpose)| KeyringId::new(tenant, purpose).expect("valid id parts"))
}

fn field() -> impl Strategy<Value = (String, String, String)> {
    ("\\PC{0,10}", "\\PC{0,10}", "\\PC{0,10}")
}

fn material(bytes: &[u8; 32]) -> KeyMaterial {
    KeyMaterial::from_slice(bytes).expect("32 bytes")
}

/// One Active version (v1).
fn single(id: KeyringId, alg: Algorithm, m: &[u8; 32]) -> Keyring {
    Keyring::builder(id).version(KeyState::Active, alg, material(m)).build().expect("valid keyring")
}

fn seal(ring: &Keyring, pt: &[u8], ctx: &Context, form: Form) -> Vec<u8> {
    match form {
        Form::Binary => ring.encrypt(pt, ctx).expect("encrypt"),
        Form::Text => ring.encrypt_text(pt, ctx).expect("encrypt_text").into_bytes(),
    }
}

fn form() -> impl Strategy<Value = Form> {
    select(vec![Form::Binary, Form::Text])
}

// ---------------------------------------------------------------------------
// Round trips

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn round_trip_every_aead_both_forms(
        alg in aead(),
        m in any::<[u8; 32]>(),
        pt in plaintext(),
        pairs in pairs(),
        form in form(),
    ) {
        let ring = single(KeyringId::new("acme", Purpose::Token).expect("id"), alg, &m);
        let ctx = context_of(&pairs);
        // Pair order does not matter.
        let reversed = Context::from_pairs(pairs.iter().rev().map(|(n, v)| (n.as_str(), v.as_slice())))
            .expect("unique names");
        prop_assert_eq!(&ctx, &reversed);

        let value = seal(&ring, &pt, &ctx, form);
        let info = keywheel::parse(&value).expect("own output parses");
        prop_assert_eq!(info.form, form);
        prop_assert_eq!(info.algorithm, alg);
        prop_assert_eq!(info.version.get(), 1);
        prop_assert_eq!(info.payload_len, pt.len());
        prop_assert_eq!(info.binary_len, 8 + alg.nonce_len() + pt.len() + 16);
        match form {
            Form::Binary => prop_assert_eq!(value.len(), info.binary_len),
            Form::Text => prop_assert!(value.starts_with(b"kw:v1:")),
        }
        let out = ring.decrypt(&value, &ctx).expect("round trip");
        prop_assert_eq!(&out[..], &pt[..]);
    }

    #[test]
    fn reencrypt_moves_to_active_and_keeps_form(
        alg in aead(),
        m1 in any::<[u8; 32]>(),
        m2 in any::<[u8; 32]>(),
        pt in plaintext(),
        pairs in pairs(),
        form in form(),
    ) {
        let id = KeyringId::new("acme", Purpose::Database).expect("id");
        let ctx = context_of(&pairs);
        let before = single(id.clone(), alg, &m1);
        let value = seal(&before, &pt, &ctx, form);
        // After a rotation: v1 Deprecated, v2 Active.
        let after = Keyring::builder(id)
            .version(KeyState::Deprecated, alg, material(&m1))
            .version(KeyState::Active, alg, material(&m2))
            .build()
            .expect("valid keyring");
        prop_assert!(after.needs_rotation(&value).expect("parse"));
        let again = after.reencrypt(&value, &ctx).expect("reencrypt");
        let info = keywheel::parse(&again).expect("parse");
        prop_assert_eq!(info.form, form);
        prop_assert_eq!(info.version.get(), 2);
        prop_assert!(!after.needs_rotation(&again).expect("parse"));
        if form == Form::Text {
            prop_assert!(again.starts_with(b"kw:v2:"));
        }
        prop_assert_eq!(&after.decrypt(&again, &ctx).expect("decrypt")[..], &pt[..]);
        // The old snapshot does not know v2.
        prop_assert!(
            matches!(before.decrypt(&again, &ctx), Err(Error::UnknownKeyVersion { version }) if version.get() == 2),
            "old snapshot must report the unknown version"
        );
        // Re-encrypting a value that is already on v2 keeps it readable too.
        let twice = after.reencrypt(&again, &ctx).expect("reencrypt current");
        prop_assert_eq!(keywheel::parse(&twice).expect("parse").form, form);
        prop_assert_eq!(&after.decrypt(&twice, &ctx).expect("decrypt")[..], &pt[..]);
    }
}

// ---------------------------------------------------------------------------
// Tampering

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any single bit flip anywhere in a binary value fails. The keyring has two
    /// live versions with the SAME material, so flipping the version field
    /// lands on a usable key and only the header binding can catch it.
    #[test]
    fn any_bit_flip_in_binary_value_fails(
        alg in aead(),
        m in any::<[u8; 32]>(),
        pt in prop::collection::vec(any::<u8>(), 0..64),
        pairs in pairs(),
        at in any::<Index>(),
        bit in 0u8..8,
    ) {
        let ring = Keyring::builder(KeyringId::new("acme", Purpose::Token).expect("id"))
            .version(KeyState::Deprecated, alg, material(&m))
            .version(KeyState::Active, alg, material(&m))
            .version(KeyState::Pending, alg, material(&m))
            .build()
            .expect("valid keyring");
        let ctx = context_of(&pairs);
        let value = ring.encrypt(&pt, &ctx).expect("encrypt");
        let mut bad = value.clone();
        let i = at.index(bad.len());
        bad[i] ^= 1 << bit;
        let result = ring.decrypt(&bad, &ctx);
        prop_assert!(result.is_err(), "flip of bit {} at byte {} of {} decrypted", bit, i, value.len());
        // Control: the untouched value still decrypts.
        prop_assert_eq!(&ring.decrypt(&value, &ctx).expect("control")[..], &pt[..]);
    }

    /// Same in the text form: the prefix, the version digits and the base64 payload.
    #[test]
    fn any_bit_flip_in_text_value_fails(
        alg in aead(),
        m in any::<[u8; 32]>(),
        pt in prop::collection::vec(any::<u8>(), 0..64),
        at in any::<Index>(),
        bit in 0u8..8,
    ) {
        let ring = Keyring::builder(KeyringId::new("acme", Purpose::Token).expect("id"))
            .version(KeyState::Deprecated, alg, material(&m))
            .version(KeyState::Active, alg, material(&m))
            .build()
            .expect("valid keyring");
        let ctx = Context::field("users", "email", "42");
        let value = ring.encrypt_text(&pt, &ctx).expect("encrypt").into_bytes();
        let mut bad = value.clone();
        let i = at.index(bad.len());
        bad[i] ^= 1 << bit;
        prop_assert!(ring.decrypt(&bad, &ctx).is_err(), "flip of bit {} at byte {} of {:?}", bit, i, String::from_utf8_lossy(&value));
    }

    /// Truncation or extension by any amount fails and never panics.
    #[test]
    fn truncated_or_extended_value_fails(
        alg in aead(),
        m in any::<[u8; 32]>(),
        pt in prop::collection::vec(any::<u8>(), 0..64),
        cut in any::<Index>(),
        extra in prop::collection::vec(any::<u8>(), 1..8),
    ) {
        let ring = single(KeyringId::new("acme", Purpose::Token).expect("id"), alg, &m);
        let ctx = Context::empty();
        let value = ring.encrypt(&pt, &ctx).expect("encrypt");
        let short = &value[..cut.index(value.len())];
        prop_assert!(ring.decrypt(short, &ctx).is_err());
        let long = [&value[..], &extra].concat();
        prop_assert!(ring.decrypt(&long, &ctx).is_err());
    }
}

// ---------------------------------------------------------------------------
// Binding: context, keyring, tenant

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn other_field_context_fails(
        alg in aead(),
        m in any::<[u8; 32]>(),
        pt in prop::collection::vec(any::<u8>(), 0..64),
        a in field(),
        b in field(),
    ) {
        prop_assume!(a != b);
        let ring = single(KeyringId::new("acme", Purpose::Token).expect("id"), alg, &m);
        let ctx_a = Context::field(&a.0, &a.1, &a.2);
        let ctx_b = Context::field(&b.0, &b.1, &b.2);
        prop_assert_ne!(&ctx_a, &ctx_b);
        for form in [Form::Binary, Form::Text] {
            let value = seal(&ring, &pt, &ctx_a, form);
            prop_assert_eq!(&ring.decrypt(&value, &ctx_a).expect("control")[..], &pt[..]);
            prop_assert!(matches!(ring.decrypt(&value, &ctx_b), Err(Error::Decrypt)));
        }
    }

    #[test]
    fn other_custom_context_fails(
        alg in aead(),
        m in any::<[u8; 32]>(),
        a in pairs(),
        b in pairs(),
    ) {
        prop_assume!(a != b);
        let ring = single(KeyringId::new("acme", Purpose::Token).expect("id"), alg, &m);
        let value = ring.encrypt(b"secret", &context_of(&a)).expect("encrypt");
        prop_assert!(matches!(ring.decrypt(&value, &context_of(&b)), Err(Error::Decrypt)));
    }

    /// Two keyrings from the SAME material but different ids (other purpose,
    /// other tenant, or both): a value never crosses over.
    #[test]
    fn other_keyring_or_tenant_fails(
        alg in aead(),
        m in any::<[u8; 32]>(),
        pt in prop::collection::vec(any::<u8>(), 0..64),
        a in keyring_id(),
        b in keyring_id(),
        form in form(),
    ) {
        prop_assume!(a != b);
        let ctx = Context::field("users", "email", "42");
        let ring_a = single(a.clone(), alg, &m);
        let ring_b = single(b, alg, &m);
        let value = seal(&ring_a, &pt, &ctx, form);
        prop_assert!(matches!(ring_b.decrypt(&value, &ctx), Err(Error::Decrypt)));
        // Control: an independently built keyring with the same id and material reads it.
        let ring_a2 = single(a, alg, &m);
        prop_assert_eq!(&ring_a2.decrypt(&value, &ctx).expect("same id and material")[..], &pt[..]);
    }

    #[test]
    fn same_purpose_other_tenant_fails(
        alg in aead(),
        m in any::<[u8; 32]>(),
        t1 in id_part(),
        t2 in id_part(),
        p in purpose(),
    ) {
        prop_assume!(t1 != t2);
        let ctx = Context::field("users", "email", "42");
        let ring_a = single(KeyringId::new(t1, p.clone()).expect("id"), alg, &m);
        let ring_b = single(KeyringId::new(t2, p).expect("id"), alg, &m);
        let value = ring_a.encrypt(b"tenant data", &ctx).expect("encrypt");
        prop_assert!(matches!(ring_b.decrypt(&value, &ctx), Err(Error::Decrypt)));
    }
}

/// Length prefixes keep shifted boundaries apart: "ab"/"c" ≠ "a"/"bc", and the
/// tenant/purpose split "a-b/c" vs "a/b-c" is not ambiguous either.
#[test]
fn boundary_shifts_do_not_collide() {
    let m = [7u8; 32];
    let ring = single(KeyringId::new("acme", Purpose::Token).expect("id"), Algorithm::Aes256Gcm, &m);
    let value = ring.encrypt(b"x", &Context::field("ab", "c", "1")).expect("encrypt");
    assert!(matches!(ring.decrypt(&value, &Context::field("a", "bc", "1")), Err(Error::Decrypt)));
    assert!(matches!(ring.decrypt(&value, &Context::field("ab", "c1", "")), Err(Error::Decrypt)));
    let pairs = Context::from_pairs([("ab", "c")]).expect("ctx");
    let value = ring.encrypt(b"x", &pairs).expect("encrypt");
    assert!(matches!(ring.decrypt(&value, &Context::from_pairs([("a", "bc")]).expect("ctx")), Err(Error::Decrypt)));
    assert!(matches!(ring.decrypt(&value, &Context::empty()), Err(Error::Decrypt)));

    let a = single(KeyringId::new("a-b", Purpose::Custom("c".into())).expect("id"), Algorithm::Aes256Gcm, &m);
    let b = single(KeyringId::new("a", Purpose::Custom("b-c".into())).expect("id"), Algorithm::Aes256Gcm, &m);
    let value = a.encrypt(b"x", &Context::empty()).expect("encrypt");
    assert!(matches!(b.decrypt(&value, &Context::empty()), Err(Error::Decrypt)));
}

// ---------------------------------------------------------------------------
// The parser

fn check_parse(input: &[u8]) -> Result<(), TestCaseError> {
    match keywheel::parse(input) {
        Ok(info) => {
            prop_assert_eq!(keywheel::version_of(input).expect("version_of agrees with parse"), info.version);
            prop_assert!(info.version.get() >= 1);
            prop_assert_eq!(info.format_version, 1);
            let (min, max) = info.algorithm.binary_len_range();
            prop_assert!(info.binary_len >= min && max.is_none_or(|max| info.binary_len <= max));
            if info.algorithm.is_aead() {
                prop_assert_eq!(info.binary_len, min + info.payload_len);
            } else {
                prop_assert_eq!(info.payload_len, 0);
            }
            if info.form == Form::Binary {
                prop_assert_eq!(info.binary_len, input.len());
                prop_assert_eq!(&input[..3], b"kw\x01");
                prop_assert_eq!(input[3], info.algorithm.id());
                prop_assert_eq!(&input[4..8], &info.version.get().to_be_bytes()[..]);
            } else {
                let prefix = format!("kw:v{}:", info.version.get());
                prop_assert!(input.starts_with(prefix.as_bytes()));
            }
        }
        Err(e) => {
            prop_assert_eq!(keywheel::version_of(input).expect_err("version_of agrees with parse"), e);
        }
    }
    Ok(())
}

/// Inputs that get past the magic: a header with a plausible or random algorithm
/// and version, a random tail, optionally in text form with a matching or
/// lying version.
fn near_valid() -> impl Strategy<Value = Vec<u8>> {
    (
        select(vec![0x00u8, 0x01, 0x02, 0x03, 0x04, 0x05, 0x10, 0x11, 0xFF]),
        select(vec![0x01u8, 0x01, 0x01, 0x00, 0x02]),
        prop_oneof![Just(0u32), Just(1u32), any::<u32>()],
        prop::collection::vec(any::<u8>(), 0..80),
        prop_oneof![Just(None), Just(Some(None)), any::<u32>().prop_map(|v| Some(Some(v)))],
    )
        .prop_map(|(alg, format, version, tail, text)| {
            let mut bin = vec![b'k', b'w', format, alg];
            bin.extend_from_slice(&version.to_be_bytes());
            bin.extend_from_slice(&tail);
            match text {
                None => bin,
                Some(lie) => format!("kw:v{}:{}", lie.unwrap_or(version), STANDARD_NO_PAD.encode(&bin)).into_bytes(),
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn parse_never_panics_on_bytes(input in prop::collection::vec(any::<u8>(), 0..256)) {
        check_parse(&input)?;
    }

    #[test]
    fn parse_never_panics_on_text(rest in "\\PC{0,64}|[0-9]{0,12}:[A-Za-z0-9+/=]{0,80}") {
        let input = format!("kw:v{rest}");
        check_parse(input.as_bytes())?;
    }

    #[test]
    fn parse_near_valid_values(input in near_valid()) {
        check_parse(&input)?;
    }

    #[test]
    fn decrypt_and_verify_never_panic(input in prop_oneof![prop::collection::vec(any::<u8>(), 0..128), near_valid()]) {
        let aead = single(KeyringId::new("acme", Purpose::Token).expect("id"), Algorithm::Aes256Gcm, &[1; 32]);
        let mac = single(KeyringId::new("acme", Purpose::ApiSignature).expect("id"), Algorithm::HmacSha256, &[1; 32]);
        let ctx = Context::empty();
        prop_assert!(aead.decrypt(&input, &ctx).is_err());
        prop_assert!(mac.verify(b"message", &input, &ctx).is_err());
        let _ = aead.needs_rotation(&input);
    }
}
