//! Legacy formats: values written by the tool a team is leaving (or no tool
//! at all), recognised from their bytes and decrypted so that they can be
//! rewritten as keywheel values (the
//! [migration of legacy data](crate::manual#14-migrating-legacy-data)).
//!
//! A [`LegacyFormat`] answers two questions: does a stored value look like
//! mine ([`LegacyFormat::recognizes`], from the bytes alone, no key, no I/O),
//! and what is its plaintext ([`LegacyFormat::decryptor`]). [`LegacyFormats`]
//! is the ordered list a caller opts into, with the recognition rules that
//! keep keywheel values and plaintext apart.

mod columns;
mod fernet;
mod lockbox;
mod plaintext;
mod vault;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use columns::LegacyColumns;
pub use fernet::FernetFormat;
pub use lockbox::LockboxFormat;
pub use plaintext::PlaintextFormat;
pub use vault::{VaultDecryptFn, VaultTransitFormat};

use crate::{Context, Error, Form, Keyring, MAGIC, Plaintext, Result, TEXT_PREFIX, Timestamp};

/// One stored value handed to a legacy format: its bytes as read from the
/// column, and the [`Context`] keywheel binds the value to (table, column,
/// row…). Formats that authenticate associated data (Lockbox) can take it
/// from the context; the others ignore it.
#[derive(Debug, Clone, Copy)]
pub struct LegacyValue<'a> {
    /// The stored bytes (text columns: the UTF-8 bytes of the text).
    pub bytes: &'a [u8],
    /// The value's context.
    pub context: &'a Context,
}

impl<'a> LegacyValue<'a> {
    /// A value and its context.
    pub fn new(bytes: &'a [u8], context: &'a Context) -> Self {
        LegacyValue { bytes, context }
    }
}

/// A format of foreign values that keywheel can read and migrate.
///
/// # Sync or async
///
/// Decryption comes in two kinds, and a format says which through
/// [`decryptor`](Self::decryptor):
///
/// - [`LegacyDecryptor::Blocking`]: CPU-bound formats with the key in memory
///   (Fernet, Lockbox, plaintext) decrypt one value at a time, synchronously.
///   A caller that handles many values runs them on a blocking thread (the
///   rotation engine's crypto threads, `tokio::task::spawn_blocking`) so a
///   batch never stalls the async runtime.
/// - [`LegacyDecryptor::Async`]: formats that need I/O (Vault transit asks
///   the Vault server) decrypt a whole batch in one awaited call, which is
///   what their servers' batch APIs want.
///
/// [`decrypt_batch`](Self::decrypt_batch) hides the difference for callers
/// that do not care (it runs a blocking format inline on the calling task).
///
/// A caller that decrypts many values (the rotation engine) groups them by
/// format with [`LegacyFormats::recognize_arc`], moves each blocking
/// format's `Arc` and its values to a blocking thread and calls
/// [`BlockingLegacyDecrypt::decrypt_one`] there, and awaits
/// [`AsyncLegacyDecrypt::decrypt_batch`] for the async ones.
///
/// # Rules for implementors
///
/// - `recognizes` must be cheap and must never panic, whatever the bytes.
///   It decides which format a value belongs to, and that decision is final:
///   a recognised value that then fails to decrypt is a failure, never handed
///   to the next format (a damaged ciphertext must not pass as plaintext).
///   So recognise loosely by the format's signature, and report a value that
///   has the signature but not the structure as
///   [`Error::MalformedLegacy`].
/// - Authentication failures (wrong key, tampered value) are the opaque
///   [`Error::Decrypt`]: no oracle about which check failed.
/// - Keys never appear in `Debug`, `Display` or errors.
///
/// A format of one's own, blocking (a made-up `hex:` prefix format):
///
/// ```
/// use keywheel_core::{BlockingLegacyDecrypt, Context, Error, LegacyDecryptor, LegacyFormat, LegacyFormats};
/// use keywheel_core::{LegacyValue, Plaintext, Result, Timestamp};
///
/// #[derive(Debug)]
/// struct Hex;
///
/// impl LegacyFormat for Hex {
///     fn name(&self) -> &str { "hex" }
///     fn recognizes(&self, value: &[u8]) -> bool { value.starts_with(b"hex:") }
///     fn decryptor(&self) -> LegacyDecryptor<'_> { LegacyDecryptor::Blocking(self) }
/// }
///
/// impl BlockingLegacyDecrypt for Hex {
///     fn decrypt_one(&self, value: &LegacyValue<'_>, _at: Timestamp) -> Result<Plaintext> {
///         let malformed = || Error::MalformedLegacy { format: "hex".into(), reason: "not hex" };
///         let digits = value.bytes.strip_prefix(b"hex:").ok_or_else(malformed)?;
///         let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
///         let bytes: Option<Vec<u8>> = digits.chunks(2).map(|p| Some(nibble(p[0])? << 4 | nibble(*p.get(1)?)?)).collect();
///         let bytes = bytes.ok_or_else(malformed)?;
///         Ok(Plaintext::from_legacy(bytes))
///     }
/// }
///
/// let formats = LegacyFormats::new().with(Hex);
/// let format = formats.recognize(b"hex:6869").expect("recognised");
/// let ctx = Context::empty();
/// let out = futures::executor::block_on(format.decrypt_batch(&[LegacyValue::new(b"hex:6869", &ctx)], Timestamp::EPOCH));
/// assert_eq!(out[0].as_ref().map(|p| p.as_bytes()).ok(), Some(&b"hi"[..]));
/// ```
#[async_trait]
pub trait LegacyFormat: Send + Sync + fmt::Debug {
    /// Stable short name used in reports, audit events and configuration:
    /// `"fernet"`, `"lockbox"`, `"vault"`, `"plaintext"` for the built-in ones.
    fn name(&self) -> &str;

    /// Cheap check from the bytes alone (no key, no I/O): is this value in
    /// this format? Never panics.
    fn recognizes(&self, value: &[u8]) -> bool;

    /// How this format decrypts: synchronously one value at a time, or
    /// asynchronously by batch.
    fn decryptor(&self) -> LegacyDecryptor<'_>;

    /// Decrypt a batch of recognised values (one rotation batch): one result
    /// per value, in order. `at` is the time of the decision (the plaintext
    /// format checks its end date against it).
    ///
    /// A blocking format runs inline here, on the calling task; callers with
    /// large batches should match on [`decryptor`](Self::decryptor) and run
    /// blocking formats on a blocking thread instead. Implementors need not
    /// override this method (it dispatches on `decryptor`).
    async fn decrypt_batch(&self, values: &[LegacyValue<'_>], at: Timestamp) -> Vec<Result<Plaintext>> {
        match self.decryptor() {
            LegacyDecryptor::Blocking(d) => values.iter().map(|v| d.decrypt_one(v, at)).collect(),
            LegacyDecryptor::Async(d) => d.decrypt_batch(values, at).await,
        }
    }
}

/// How a [`LegacyFormat`] decrypts; see the trait's section on sync and async.
#[derive(Clone, Copy)]
pub enum LegacyDecryptor<'a> {
    /// CPU-bound, one value at a time; run it on a blocking thread.
    Blocking(&'a dyn BlockingLegacyDecrypt),
    /// Needs I/O; await a whole batch.
    Async(&'a dyn AsyncLegacyDecrypt),
}

impl fmt::Debug for LegacyDecryptor<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LegacyDecryptor::Blocking(_) => "LegacyDecryptor::Blocking",
            LegacyDecryptor::Async(_) => "LegacyDecryptor::Async",
        })
    }
}

/// Synchronous decryption of one legacy value (no I/O, CPU only).
pub trait BlockingLegacyDecrypt: Send + Sync {
    /// The plaintext of `value`, decided at time `at`.
    fn decrypt_one(&self, value: &LegacyValue<'_>, at: Timestamp) -> Result<Plaintext>;
}

/// Asynchronous decryption of a batch of legacy values (formats that need I/O).
#[async_trait]
pub trait AsyncLegacyDecrypt: Send + Sync {
    /// One result per value, in order, decided at time `at`.
    async fn decrypt_batch(&self, values: &[LegacyValue<'_>], at: Timestamp) -> Vec<Result<Plaintext>>;
}

impl Plaintext {
    /// The plaintext a legacy format decrypted, for [`LegacyFormat`]
    /// implementations outside keywheel. The bytes move into a buffer of
    /// exactly their length (wiped on drop like every [`Plaintext`]) and the
    /// given vector is wiped, spare capacity included.
    pub fn from_legacy(bytes: Vec<u8>) -> Plaintext {
        use zeroize::Zeroize as _;
        let mut bytes = bytes;
        let plaintext = Plaintext::new(bytes.as_slice().to_vec());
        bytes.zeroize();
        plaintext
    }
}

/// Whether a value is, or looks like, a keywheel value: it parses, or it
/// starts with the text prefix `kw:v`, or with the magic `kw` followed by a
/// control byte (a format version byte). Such a value is never legacy: a
/// damaged or future-format keywheel value stays a failure, it is not taken
/// for plaintext.
///
/// ```
/// use keywheel_core::looks_like_keywheel;
/// assert!(looks_like_keywheel(b"kw:v3:not-base64!"));
/// assert!(!looks_like_keywheel(b"kwame@example.com"));
/// ```
pub fn looks_like_keywheel(value: &[u8]) -> bool {
    value.starts_with(TEXT_PREFIX.as_bytes())
        || (value.len() > MAGIC.len()
            && value.starts_with(&MAGIC)
            && (value[MAGIC.len()] < 0x20 || value[MAGIC.len()] >= 0x7f))
        || crate::parse(value).is_ok()
}

/// The legacy formats a caller opted into, in the order they are tried.
///
/// Recognition ([`recognize`](Self::recognize)):
///
/// 1. a value that [looks like keywheel](looks_like_keywheel) is never legacy;
/// 2. then each format in the order added, first match wins;
/// 3. plaintext, if accepted at all ([`accept_plaintext_until`](Self::accept_plaintext_until)),
///    is tried last, whatever the order of the calls.
///
/// An empty list (the default) recognises nothing: legacy data is always an
/// explicit opt-in.
///
/// ```
/// use keywheel_core::{LegacyFormats, Timestamp, VaultTransitFormat};
/// let formats = LegacyFormats::new()
///     .accept_plaintext_until(Timestamp::from_millis(1_900_000_000_000))
///     .with(VaultTransitFormat::new(|ciphertexts: Vec<String>| async move {
///         Ok(ciphertexts.iter().map(|_| Ok(b"from vault".to_vec())).collect())
///     }));
/// assert_eq!(formats.recognize(b"vault:v1:AAAA").map(|f| f.name()), Some("vault"));
/// assert_eq!(formats.recognize(b"alice@example.com").map(|f| f.name()), Some("plaintext"));
/// assert!(formats.recognize(b"kw:v1:AAAA").is_none());
/// assert!(LegacyFormats::new().recognize(b"alice@example.com").is_none());
/// ```
///
/// A rotation writes a migrated value in the form of its column: text
/// (`kw:v{N}:…`, the default, as Fernet tokens, Lockbox's base64 and
/// plaintext live in text columns) or binary for a `bytea` column
/// ([`stored_as`](Self::stored_as)).
#[derive(Clone, Default)]
pub struct LegacyFormats {
    formats: Vec<Arc<dyn LegacyFormat>>,
    plaintext: Option<Arc<dyn LegacyFormat>>,
    binary: bool,
}

impl fmt::Debug for LegacyFormats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.formats.iter().chain(&self.plaintext)).finish()
    }
}

impl LegacyFormats {
    /// No legacy format: every non-keywheel value is a failure.
    pub fn new() -> Self {
        LegacyFormats::default()
    }

    /// This list with `format` tried after the ones already in it. A format
    /// with the same [name](LegacyFormat::name) as one in the list replaces
    /// it (in its place). A format named `"plaintext"` goes to the last place
    /// whatever the order of the calls.
    pub fn with(self, format: impl LegacyFormat + 'static) -> Self {
        self.with_arc(Arc::new(format))
    }

    /// [`with`](Self::with) for a shared format.
    pub fn with_arc(mut self, format: Arc<dyn LegacyFormat>) -> Self {
        if format.name() == PlaintextFormat::NAME {
            self.plaintext = Some(format);
        } else if let Some(slot) = self.formats.iter_mut().find(|f| f.name() == format.name()) {
            *slot = format;
        } else {
            self.formats.push(format);
        }
        self
    }

    /// Accept plaintext (any value no other format recognises and that does
    /// not look like keywheel) until `until`; see [`PlaintextFormat`]. There
    /// is no way to accept plaintext without an end date.
    pub fn accept_plaintext_until(self, until: Timestamp) -> Self {
        self.with(PlaintextFormat::until(until))
    }

    /// The form the column holds, in which a rotation writes the values it
    /// migrates: [`Form::Text`] by default, [`Form::Binary`] for a binary
    /// (`bytea`) column.
    ///
    /// ```
    /// use keywheel_core::{Form, LegacyFormats, LockboxFormat};
    /// let key = "0000000000000000000000000000000000000000000000000000000000000000";
    /// let formats = LegacyFormats::new().with(LockboxFormat::new(key)?.binary()).stored_as(Form::Binary);
    /// assert_eq!(formats.stored_form(), Form::Binary);
    /// assert_eq!(LegacyFormats::new().stored_form(), Form::Text);
    /// # Ok::<(), keywheel_core::Error>(())
    /// ```
    pub fn stored_as(mut self, form: Form) -> Self {
        self.binary = form == Form::Binary;
        self
    }

    /// The column's form (see [`stored_as`](Self::stored_as)).
    pub fn stored_form(&self) -> Form {
        if self.binary { Form::Binary } else { Form::Text }
    }

    /// The format a stored value belongs to, if any (the rules above). Never panics.
    pub fn recognize(&self, value: &[u8]) -> Option<&dyn LegacyFormat> {
        self.recognize_arc(value).map(|f| f.as_ref())
    }

    /// [`recognize`](Self::recognize), as the shared handle (to move into a blocking task).
    pub fn recognize_arc(&self, value: &[u8]) -> Option<&Arc<dyn LegacyFormat>> {
        if looks_like_keywheel(value) {
            return None;
        }
        self.iter().find(|f| f.recognizes(value))
    }

    /// The format with this name.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn LegacyFormat>> {
        self.iter().find(|f| f.name() == name)
    }

    /// The formats in recognition order (plaintext last).
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn LegacyFormat>> {
        self.formats.iter().chain(&self.plaintext)
    }

    /// The formats' names in recognition order.
    pub fn names(&self) -> Vec<&str> {
        self.iter().map(|f| f.name()).collect()
    }

    /// Whether no format was opted into.
    pub fn is_empty(&self) -> bool {
        self.formats.is_empty() && self.plaintext.is_none()
    }

    /// Reading during the migration period: the plaintext of a keywheel value
    /// (through `keyring`), or of a value in one of these legacy formats.
    ///
    /// A value that looks like keywheel goes to
    /// [`Keyring::decrypt`](crate::Keyring::decrypt), whatever the legacy
    /// formats. A value that none of them recognises gets the keyring's
    /// answer too (a [`FormatError`](crate::FormatError)). A recognised value
    /// is decrypted by its format alone (at time `at`), with no fallback.
    /// With an empty list this is exactly `keyring.decrypt`: plaintext is
    /// read only if the caller accepted it, with its end date.
    ///
    /// ```
    /// use keywheel_core::{Algorithm, Context, KeyMaterial, KeyState, Keyring, KeyringId, LegacyFormats, Purpose, Timestamp};
    /// let keyring = Keyring::builder(KeyringId::new("acme", Purpose::Database)?)
    ///     .version(KeyState::Active, Algorithm::Aes256Gcm, KeyMaterial::generate()?)
    ///     .build()?;
    /// let ctx = Context::field("users", "email", "42");
    /// let formats = LegacyFormats::new().accept_plaintext_until(Timestamp::from_millis(2_000_000_000_000));
    /// let now = Timestamp::from_millis(1_800_000_000_000);
    ///
    /// let stored = keyring.encrypt_text(b"new@example.com", &ctx)?;
    /// assert_eq!(formats.decrypt_or_legacy_blocking(&keyring, stored.as_bytes(), &ctx, now)?.as_bytes(), b"new@example.com");
    /// assert_eq!(formats.decrypt_or_legacy_blocking(&keyring, b"old@example.com", &ctx, now)?.as_bytes(), b"old@example.com");
    /// assert!(LegacyFormats::new().decrypt_or_legacy_blocking(&keyring, b"old@example.com", &ctx, now).is_err());
    /// # Ok::<(), keywheel_core::Error>(())
    /// ```
    pub async fn decrypt_or_legacy(
        &self,
        keyring: &Keyring,
        value: &[u8],
        context: &Context,
        at: Timestamp,
    ) -> Result<Plaintext> {
        if let Some(format) = self.recognize(value)
            && let LegacyDecryptor::Async(d) = format.decryptor()
        {
            let batch = [LegacyValue::new(value, context)];
            return d.decrypt_batch(&batch, at).await.into_iter().next().unwrap_or(Err(Error::Decrypt));
        }
        self.decrypt_or_legacy_blocking(keyring, value, context, at)
    }

    /// [`decrypt_or_legacy`](Self::decrypt_or_legacy) without a runtime, for
    /// blocking formats. A value of an async format (Vault transit) is
    /// refused with [`Error::InvalidArgument`]: use the async method for it.
    pub fn decrypt_or_legacy_blocking(
        &self,
        keyring: &Keyring,
        value: &[u8],
        context: &Context,
        at: Timestamp,
    ) -> Result<Plaintext> {
        match self.recognize(value) {
            None => keyring.decrypt(value, context),
            Some(format) => match format.decryptor() {
                LegacyDecryptor::Blocking(d) => d.decrypt_one(&LegacyValue::new(value, context), at),
                LegacyDecryptor::Async(_) => Err(Error::InvalidArgument(format!(
                    "the {} legacy format decrypts asynchronously: use decrypt_or_legacy",
                    format.name()
                ))),
            },
        }
    }

    /// Count stored values by kind: keywheel, each legacy format, unrecognised.
    pub fn census<'a>(&self, values: impl IntoIterator<Item = &'a [u8]>) -> LegacyCensus {
        let mut census = LegacyCensus::default();
        for value in values {
            census.record(self, value);
        }
        census
    }
}

/// Stored values counted by what they are: keywheel (or looks like it), per
/// legacy format name, or unrecognised (a failure for a migration).
///
/// ```
/// use keywheel_core::{LegacyCensus, LegacyFormats, Timestamp};
/// let formats = LegacyFormats::new().accept_plaintext_until(Timestamp::from_millis(i64::MAX));
/// let census = formats.census([&b"kw:v1:AAAA"[..], b"alice", b"bob"]);
/// assert_eq!(census.keywheel, 1);
/// assert_eq!(census.legacy.get("plaintext"), Some(&2));
/// assert_eq!(census.legacy_total(), 2);
/// assert_eq!(census.unrecognized, 0);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyCensus {
    /// Values that are (or look like) keywheel values.
    pub keywheel: u64,
    /// Values per legacy format name.
    pub legacy: BTreeMap<String, u64>,
    /// Values no opted-in format recognises.
    pub unrecognized: u64,
}

impl LegacyCensus {
    /// Count one value.
    pub fn record(&mut self, formats: &LegacyFormats, value: &[u8]) {
        if looks_like_keywheel(value) {
            self.keywheel += 1;
        } else if let Some(format) = formats.recognize(value) {
            self.add(format.name(), 1);
        } else {
            self.unrecognized += 1;
        }
    }

    /// Add `count` values of the legacy format `name`.
    pub fn add(&mut self, name: &str, count: u64) {
        *self.legacy.entry(name.to_owned()).or_default() += count;
    }

    /// All legacy values, every format together.
    pub fn legacy_total(&self) -> u64 {
        self.legacy.values().sum()
    }
}

/// The values of `sources` (of `keyring` only, if given) counted by kind:
/// keywheel (or looking like it), per legacy format declared for their
/// column ([`RecordSource::legacy_formats`](crate::RecordSource::legacy_formats)),
/// or unrecognised. A full scan, no key needed: what
/// [`Rotator::legacy_census`](crate::Rotator::legacy_census) does over its
/// sources, for a reader without a [`Keywheel`](crate::Keywheel).
pub async fn legacy_census_of(
    sources: &[Arc<dyn crate::RecordSource>],
    keyring: Option<&crate::KeyringId>,
) -> Result<LegacyCensus> {
    let mut census = LegacyCensus::default();
    for source in sources {
        let mut request = crate::ScanRequest { keyring: keyring.cloned(), ..crate::ScanRequest::all(1024) };
        loop {
            let values = source.scan(&request).await?;
            let Some(last) = values.last() else { break };
            request.after = Some(crate::source::advanced(source.as_ref(), &request, last)?);
            for v in values.iter().filter(|v| keyring.is_none_or(|k| &v.keyring == k)) {
                if looks_like_keywheel(&v.value) {
                    census.keywheel += 1;
                } else if let Some(formats) = source.legacy_formats(&v.cursor) {
                    census.record(&formats, &v.value);
                } else {
                    census.unrecognized += 1;
                }
            }
        }
    }
    Ok(census)
}

/// Strict base64 decoding that reports a malformed value of `format`.
fn decode_base64(engine: &impl base64::Engine, format: &str, text: &[u8]) -> Result<Vec<u8>> {
    engine.decode(text).map_err(|_| malformed(format, "base64 does not decode"))
}

fn malformed(format: &str, reason: &'static str) -> Error {
    Error::MalformedLegacy { format: format.to_owned(), reason }
}
