//! Field-encryption overhead of keywheel against raw AES-256-GCM, measured in
//! one run so that the ratios are meaningful (same machine state, same build).
//!
//! Groups (the pairs to compare share a group):
//!
//! * `encrypt/{32,256,4096}`: ids `keywheel` ([`Keyring::encrypt`]) and `raw`;
//!   target keywheel ≤ 1.2 × raw.
//! * `decrypt/{32,256,4096}`: ids `keywheel` ([`Keyring::decrypt`]) and `raw`;
//!   target keywheel ≤ 1.3 × raw. A third id, `raw_zeroizing`, is the raw
//!   decrypt wrapped in a byte-wise `Zeroizing<Vec<u8>>`, for comparison with
//!   keywheel's `Plaintext`, which wipes word-wise on drop.
//! * `versions/decrypt_256`: ids `1_version` (a one-version keyring),
//!   `1000_versions` (the value is under the newest, Active, version of a
//!   1000-version keyring) and `1000_versions_oldest` (under version 1,
//!   Deprecated); target 1000 ≤ 1.1 × 1.
//! * `blind_index/email`: ids `keywheel` ([`Keyring::blind_index`] of a
//!   24-byte email, no normalisation), `keywheel_trim_lowercase` (the same
//!   with the `trim-lowercase/1` normalisation, for information) and `raw`
//!   (one HMAC-SHA256 over a message of the same length as keywheel's:
//!   header ‖ keyring id ‖ index context ‖ plaintext, from a cached keyed
//!   state, as keywheel caches one per version, truncated into a `Vec` of the
//!   same size); target keywheel ≤ 1.3 × raw.
//!
//! The raw baseline is the cheapest *honest* equivalent of what keywheel does:
//!
//! * one cached `Aes256Gcm` instance (keywheel also caches one per version);
//! * the nonce from keywheel's own nonce source ([`keywheel_core::random_nonce`]),
//!   so both sides pay the same for randomness;
//! * one output `Vec` with the header-less layout `nonce ‖ ciphertext ‖ tag`,
//!   filled in place with `AeadInOut::encrypt_inout_detached` (no second
//!   buffer, unlike `Aead::encrypt`, which allocates the ciphertext and would
//!   then need another copy to put the nonce in front);
//! * associated data of the SAME length as keywheel's (header ‖ keyring id ‖
//!   context encoding, precomputed once), because binding the context is part
//!   of the job, not overhead: the ratio isolates keywheel's framing, lookups,
//!   usage counting and AAD assembly. Decrypt returns a plain `Vec` on the raw
//!   side and keywheel's zeroizing buffer on the other; that wipe is a
//!   deliberate cost and is inside the ratio (`raw_zeroizing` shows its size).
//!
//! Run: `cargo bench --bench field_crypto`, then `python3 scripts/bench-ratios.py`.
//! With `KEYWHEEL_BENCH_RECORDER=1` the keyrings count into a metrics
//! recorder of plain atomics (the cost of the counters on the hot path).
//! The whole run takes about a minute and a half (see `config()`).

use std::hint::black_box;
use std::time::Duration;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut, KeyInit, Nonce, Tag};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hmac::{Hmac, Mac};
use keywheel_core::{
    Algorithm, BlindIndex, Context, KeyMaterial, KeyState, Keyring, KeyringId, Normalization, Purpose, random_nonce,
};
use sha2::Sha256;
// The zeroize version keywheel uses, through secrecy's re-export (no extra dev-dependency).
use secrecy::zeroize::Zeroizing;

const SIZES: [usize; 3] = [32, 256, 4096];
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

fn context() -> Context {
    Context::field("users", "email", "12345")
}

fn keyring_id() -> KeyringId {
    KeyringId::new("acme", Purpose::Database).expect("valid keyring id")
}

/// Fixed, distinct material per version (benchmarks need no secrecy).
fn material(version: u32) -> KeyMaterial {
    let mut bytes = [0u8; 32];
    bytes[..4].copy_from_slice(&version.to_be_bytes());
    bytes[4..].fill(0x5a);
    KeyMaterial::from_slice(&bytes).expect("32 bytes")
}

/// A keyring with `count` AES-256-GCM versions: all Deprecated but the newest, Active.
fn keyring(count: u32) -> Keyring {
    let mut builder = Keyring::builder(keyring_id());
    for version in 1..=count {
        let state = if version == count { KeyState::Active } else { KeyState::Deprecated };
        builder = builder.version(state, Algorithm::Aes256Gcm, material(version));
    }
    builder.build().expect("valid keyring")
}

fn plaintext(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Raw AES-256-GCM with the same amount of associated data as keywheel.
struct Raw {
    cipher: Aes256Gcm,
    aad: Vec<u8>,
}

impl Raw {
    fn new() -> Self {
        let ctx = context();
        let id = keyring_id().to_string();
        let mut aad = vec![0u8; keywheel_core::HEADER_LEN];
        aad.extend_from_slice(&u16::try_from(id.len()).expect("short id").to_be_bytes());
        aad.extend_from_slice(id.as_bytes());
        aad.extend_from_slice(ctx.encoded().expect("valid context"));
        let cipher = Aes256Gcm::new_from_slice(&[0x42; 32]).expect("32-byte key");
        Raw { cipher, aad }
    }

    /// `nonce ‖ ciphertext ‖ tag` in one allocation.
    fn encrypt(&self, plaintext: &[u8]) -> Vec<u8> {
        let nonce = random_nonce::<NONCE_LEN>().expect("nonce");
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let nonce = Nonce::<Aes256Gcm>::from(nonce);
        let tag =
            self.cipher.encrypt_inout_detached(&nonce, &self.aad, (&mut out[NONCE_LEN..]).into()).expect("encrypt");
        out.extend_from_slice(&tag);
        out
    }

    fn decrypt(&self, value: &[u8]) -> Vec<u8> {
        let (nonce, rest) = value.split_at(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let nonce = Nonce::<Aes256Gcm>::try_from(nonce).expect("12 bytes");
        let tag = Tag::<Aes256Gcm>::try_from(tag).expect("16 bytes");
        let mut out = ciphertext.to_vec();
        self.cipher.decrypt_inout_detached(&nonce, &self.aad, out.as_mut_slice().into(), &tag).expect("authentic");
        out
    }
}

fn bench_encrypt(c: &mut Criterion) {
    let ring = keyring(1);
    let raw = Raw::new();
    let ctx = context();
    for size in SIZES {
        let data = plaintext(size);
        let mut group = c.benchmark_group(format!("encrypt/{size}"));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function("keywheel", |b| b.iter(|| ring.encrypt(black_box(&data), black_box(&ctx))));
        group.bench_function("raw", |b| b.iter(|| raw.encrypt(black_box(&data))));
        group.finish();
    }
}

fn bench_decrypt(c: &mut Criterion) {
    let ring = keyring(1);
    let raw = Raw::new();
    let ctx = context();
    for size in SIZES {
        let data = plaintext(size);
        let value = ring.encrypt(&data, &ctx).expect("encrypt");
        let raw_value = raw.encrypt(&data);
        assert_eq!(&ring.decrypt(&value, &ctx).expect("decrypt")[..], &data[..]);
        assert_eq!(raw.decrypt(&raw_value), data);
        let mut group = c.benchmark_group(format!("decrypt/{size}"));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function("keywheel", |b| b.iter(|| ring.decrypt(black_box(&value), black_box(&ctx))));
        group.bench_function("raw", |b| b.iter(|| raw.decrypt(black_box(&raw_value))));
        group.bench_function("raw_zeroizing", |b| b.iter(|| Zeroizing::new(raw.decrypt(black_box(&raw_value)))));
        group.finish();
    }
}

fn bench_versions(c: &mut Criterion) {
    let ctx = context();
    let data = plaintext(256);
    let one = keyring(1);
    let many = keyring(1000);
    let one_value = one.encrypt(&data, &ctx).expect("encrypt");
    let newest_value = many.encrypt(&data, &ctx).expect("encrypt");
    // Same material and version number as `one`'s version 1, so `many` (where
    // version 1 is Deprecated) decrypts it.
    let oldest_value = one_value.clone();
    for value in [&newest_value, &oldest_value] {
        assert_eq!(&many.decrypt(value, &ctx).expect("decrypt")[..], &data[..]);
    }
    let mut group = c.benchmark_group("versions/decrypt_256");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("1_version", |b| b.iter(|| one.decrypt(black_box(&one_value), black_box(&ctx))));
    group.bench_function("1000_versions", |b| b.iter(|| many.decrypt(black_box(&newest_value), black_box(&ctx))));
    group
        .bench_function("1000_versions_oldest", |b| b.iter(|| many.decrypt(black_box(&oldest_value), black_box(&ctx))));
    group.finish();
}

fn bench_blind_index(c: &mut Criterion) {
    let ring = keyring(1);
    let email = b"ann.lee.42@example.org  ";
    let plain = BlindIndex::new("users", "email");
    let lower = plain.clone().normalization(Normalization::TrimLowercase);
    // The raw side hashes a message as long as keywheel's: 8-byte header,
    // keyring id with its length, the index context, the plaintext.
    let id_len = 2 + keyring_id().canonical().len();
    let context_len = plain.context().encoded().expect("valid").len();
    let message = vec![0x5a; 8 + id_len + context_len + email.len()];
    let keyed = <Hmac<Sha256>>::new_from_slice(&[7; 32]).expect("any key length");
    let mut group = c.benchmark_group("blind_index/email");
    group.bench_function("keywheel", |b| b.iter(|| ring.blind_index(black_box(email), black_box(&plain))));
    group.bench_function("keywheel_trim_lowercase", |b| {
        b.iter(|| ring.blind_index(black_box(email), black_box(&lower)))
    });
    group.bench_function("raw", |b| {
        b.iter(|| {
            let mut mac = keyed.clone();
            mac.update(black_box(&message));
            let full = mac.finalize().into_bytes();
            let mut out = Vec::with_capacity(24);
            out.extend_from_slice(&message[..8]);
            out.extend_from_slice(&full[..16]);
            out
        })
    });
    group.finish();
}

/// A metrics recorder whose counters are plain atomics (what a Prometheus
/// recorder does per increment), installed when `KEYWHEEL_BENCH_RECORDER` is
/// set: the keyrings then count into real handles, so a run with and one
/// without it show the cost of the counters on the hot path.
struct AtomicRecorder;

impl metrics::Recorder for AtomicRecorder {
    fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)))
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)))
    }
    fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// Short but stable: 21 benchmarks × (1 s warm-up + 3 s measurement + analysis)
/// ≈ 80 s on the 2-core reference machine. Command-line flags still override.
fn config() -> Criterion {
    if std::env::var_os("KEYWHEEL_BENCH_RECORDER").is_some() {
        // Only fails if a recorder is installed already: then that one counts.
        let _ = metrics::set_global_recorder(AtomicRecorder);
    }
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(60)
        .nresamples(20_000)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_encrypt, bench_decrypt, bench_versions, bench_blind_index
}
criterion_main!(benches);
