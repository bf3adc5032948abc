//! Fuzz target `parse`: the wire parser must never panic on any input, and
//! what it accepts must be self-consistent.
//!
//! Checks, for every input:
//! * [`keywheel_core::parse`] and [`keywheel_core::version_of`] agree (same
//!   version, or both fail with the same typed error);
//! * an accepted value has format version 1, a version ≥ 1, and lengths that
//!   add up (header + nonce + payload + tag = binary length for encrypted
//!   values; signatures and blind index tags have no payload and a length in
//!   their algorithm's range);
//! * an accepted binary value re-encoded in the text form `kw:v{N}:{base64}`
//!   parses to the same info (form aside), and an accepted text value starts
//!   with `kw:v{N}:` and its base64 part parses as the same binary value.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use keywheel_core::{Form, HEADER_LEN, ValueInfo, parse, version_of};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = parse(data);
    match (&parsed, version_of(data)) {
        (Ok(info), Ok(version)) => assert_eq!(info.version, version, "parse and version_of disagree"),
        (Err(a), Err(b)) => assert_eq!(a, &b, "parse and version_of fail differently"),
        (p, v) => panic!("parse and version_of disagree: {p:?} vs {v:?}"),
    }
    let Ok(info) = parsed else { return };
    check_info(&info);
    match info.form {
        Form::Binary => {
            assert_eq!(info.binary_len, data.len(), "binary length of a binary value");
            let mut text = format!("kw:v{}:", info.version.get());
            STANDARD_NO_PAD.encode_string(data, &mut text);
            let again = parse(text.as_bytes()).expect("the text form of a valid binary value parses");
            assert_eq!(again.form, Form::Text);
            assert_eq!(same_but_form(&again), same_but_form(&info), "text form parses differently");
        }
        Form::Text => {
            let prefix = format!("kw:v{}:", info.version.get());
            assert!(data.starts_with(prefix.as_bytes()), "text value without its kw:v{{N}}: prefix");
            let binary =
                STANDARD_NO_PAD.decode(&data[prefix.len()..]).expect("an accepted text value has valid base64");
            let again = parse(&binary).expect("the binary inside a valid text value parses");
            assert_eq!(again.form, Form::Binary);
            assert_eq!(same_but_form(&again), same_but_form(&info), "binary form parses differently");
        }
    }
});

fn check_info(info: &ValueInfo) {
    assert_eq!(info.format_version, 1);
    assert!(info.version.get() >= 1);
    let alg = info.algorithm;
    let (min, max) = alg.binary_len_range();
    assert_eq!(min, HEADER_LEN + alg.nonce_len() + alg.tag_len(), "shortest {alg} value");
    assert!(
        info.binary_len >= min && max.is_none_or(|max| info.binary_len <= max),
        "{alg} value of {} bytes",
        info.binary_len
    );
    if alg.is_aead() {
        assert_eq!(info.binary_len, min + info.payload_len, "lengths do not add up for {alg}");
    } else {
        // Signatures and blind index tags carry no payload; tags vary in length.
        assert_eq!(info.payload_len, 0, "a {alg} value carries no payload");
    }
}

fn same_but_form(info: &ValueInfo) -> (u8, keywheel_core::Algorithm, u32, usize, usize) {
    (info.format_version, info.algorithm, info.version.get(), info.binary_len, info.payload_len)
}
