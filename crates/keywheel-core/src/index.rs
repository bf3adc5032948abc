//! Blind indexes: keyed, versioned, deterministic tags of a normalised
//! plaintext, for equality lookups on encrypted fields (the
//! [manual](crate::manual#13-searchable-fields-blind-indexes)).
//!
//! A tag is `header ‖ HMAC-SHA256(index key, header ‖ u16-BE len(keyring id)
//! ‖ keyring id ‖ context ‖ normalised plaintext)[..len]`, with the usual
//! 8-byte header (algorithm `0x11`, the key version) so that census and SQL
//! filtering read its version without a key. The index key of a version is
//! derived from the version's material with its own HKDF label (`"index"`),
//! never the encryption key. The context names the table, the indexed
//! column and the normalisation, never the row: equal plaintexts of one
//! column get equal tags, which is what makes them searchable.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use unicode_normalization::UnicodeNormalization;
use zeroize::{Zeroize, Zeroizing};

use crate::wire::{self, HEADER_LEN};
use crate::{Context, Error, Form, KeyVersion, Result};

/// Shortest tag (bytes after the header) a blind index may keep.
pub(crate) const MIN_TAG_LEN: usize = 8;
/// Longest tag: the whole HMAC-SHA256 output.
pub(crate) const MAX_TAG_LEN: usize = 32;

/// A user-supplied normalisation function (see [`Normalization::custom`]).
pub type NormalizeFn = dyn Fn(&[u8]) -> Result<Vec<u8>> + Send + Sync;

/// How a plaintext is normalised before it is tagged, so that the tags
/// stored by writers and the terms computed by lookups agree (`" Ann@X.org"`
/// and `"ann@x.org"` find each other under [`TrimLowercase`](Self::TrimLowercase)).
///
/// Each built-in normalisation has a versioned [name](Self::name) that is
/// bound into every tag: a tag made under one normalisation never matches a
/// lookup made under another, and if a built-in ever has to change (a new
/// Unicode version), it does so under a new name rather than silently
/// changing the tags of existing rows.
///
/// ```
/// use keywheel_core::Normalization;
/// let n: Normalization = "email".parse()?;
/// assert_eq!(n.name(), "trim-lowercase/1");
/// assert_eq!(&n.apply(b"  Ann@Example.ORG ")?[..], b"ann@example.org");
/// assert_eq!(&Normalization::DigitsOnly.apply("+1 (555) 010-9999".as_bytes())?[..], b"15550109999");
/// # Ok::<(), keywheel_core::Error>(())
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Normalization {
    /// The bytes as they are (`none`): for values already canonical (ids, hashes).
    #[default]
    None,
    /// Trim Unicode white space at both ends, then Unicode lowercase
    /// (`trim-lowercase/1`; config alias `email`). Needs UTF-8.
    TrimLowercase,
    /// Trim, Unicode NFKC, full case folding, NFKC again (`nfkc-casefold/1`):
    /// also folds compatibility forms (full-width letters, ligatures) and
    /// `ß`/`ss`. Needs UTF-8.
    NfkcCasefold,
    /// NFKC, then keep only the ASCII digits 0–9 (`digits/1`; config alias
    /// `phone`): phone numbers, card and account numbers written with spaces
    /// or dashes. Needs UTF-8.
    DigitsOnly,
    /// An application's own function, under a name of its choosing (bound
    /// into the tags like a built-in's): see [`Normalization::custom`].
    Custom {
        /// The name bound into the tags; give it a version, e.g. `iban/1`.
        name: Arc<str>,
        /// The function.
        function: Arc<NormalizeFn>,
    },
}

impl Normalization {
    /// A normalisation of the application's own. `name` is bound into every
    /// tag (include a version, e.g. `iban/1`, and change it when the function
    /// changes); it must be non-empty printable ASCII without spaces and must
    /// not be a built-in's name.
    ///
    /// ```
    /// use keywheel_core::Normalization;
    /// let strip_dashes = Normalization::custom("no-dashes/1", |b| Ok(b.iter().copied().filter(|c| *c != b'-').collect()))?;
    /// assert_eq!(&strip_dashes.apply(b"12-34")?[..], b"1234");
    /// # Ok::<(), keywheel_core::Error>(())
    /// ```
    pub fn custom(
        name: impl Into<String>,
        function: impl Fn(&[u8]) -> Result<Vec<u8>> + Send + Sync + 'static,
    ) -> Result<Self> {
        let name = name.into();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::InvalidArgument(format!(
                "a normalisation name is non-empty printable ASCII without spaces, not {name:?}"
            )));
        }
        if Self::BUILT_IN.iter().any(|n| n.name() == name) {
            return Err(Error::InvalidArgument(format!("{name} is the name of a built-in normalisation")));
        }
        Ok(Normalization::Custom { name: name.into(), function: Arc::new(function) })
    }

    /// The built-in normalisations.
    pub const BUILT_IN: [Normalization; 4] =
        [Normalization::None, Normalization::TrimLowercase, Normalization::NfkcCasefold, Normalization::DigitsOnly];

    /// The versioned name bound into the tags, e.g. `trim-lowercase/1`.
    pub fn name(&self) -> &str {
        match self {
            Normalization::None => "none",
            Normalization::TrimLowercase => "trim-lowercase/1",
            Normalization::NfkcCasefold => "nfkc-casefold/1",
            Normalization::DigitsOnly => "digits/1",
            Normalization::Custom { name, .. } => name,
        }
    }

    /// Normalise `plaintext`. The result is wiped when dropped (it is as
    /// secret as the plaintext). A text normalisation of bytes that are not
    /// UTF-8 is [`Error::NotIndexable`] (which names the normalisation, never
    /// the plaintext).
    pub fn apply(&self, plaintext: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        Ok(match self.normalize(plaintext)? {
            Normalized::Same(bytes) => Zeroizing::new(bytes.to_vec()),
            Normalized::Changed(bytes) => bytes,
        })
    }

    /// [`apply`](Self::apply) without a copy when nothing changes (`none`).
    pub(crate) fn normalize<'p>(&self, plaintext: &'p [u8]) -> Result<Normalized<'p>> {
        let text = || {
            std::str::from_utf8(plaintext).map_err(|_| Error::NotIndexable {
                normalization: self.name().to_owned(),
                reason: "the plaintext is not UTF-8",
            })
        };
        // The intermediate strings hold plaintext too: each is wiped.
        Ok(Normalized::Changed(Zeroizing::new(match self {
            Normalization::None => return Ok(Normalized::Same(plaintext)),
            Normalization::TrimLowercase => text()?.trim().to_lowercase().into_bytes(),
            Normalization::NfkcCasefold => {
                let nfkc = Zeroizing::new(text()?.trim().nfkc().collect::<String>());
                let folded = Zeroizing::new(caseless::default_case_fold_str(&nfkc));
                folded.nfkc().collect::<String>().into_bytes()
            }
            Normalization::DigitsOnly => text()?.nfkc().filter(char::is_ascii_digit).collect::<String>().into_bytes(),
            Normalization::Custom { function, .. } => function(plaintext)?,
        })))
    }
}

/// A normalised plaintext: the input itself, or a new buffer wiped on drop.
pub(crate) enum Normalized<'p> {
    Same(&'p [u8]),
    Changed(Zeroizing<Vec<u8>>),
}

impl std::ops::Deref for Normalized<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Normalized::Same(bytes) => bytes,
            Normalized::Changed(bytes) => bytes,
        }
    }
}

impl fmt::Debug for Normalization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Normalization({})", self.name())
    }
}

impl PartialEq for Normalization {
    /// Normalisations are equal when their names are (the name is what the tags bind).
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for Normalization {}

/// Parses a built-in's name, with or without its version (`trim-lowercase`,
/// `trim-lowercase/1`), or an alias: `email` (trim-lowercase) and `phone` (digits).
impl FromStr for Normalization {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let wanted = match s {
            "email" => "trim-lowercase",
            "phone" => "digits",
            other => other,
        };
        Self::BUILT_IN
            .into_iter()
            .find(|n| n.name() == wanted || n.name().split('/').next() == Some(wanted))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown normalisation {s:?}: expected none, trim-lowercase (alias email), nfkc-casefold \
                     or digits (alias phone)"
                ))
            })
    }
}

/// A blind index over one column: where it is (table and indexed column),
/// how plaintexts are normalised and how long its tags are. It is the
/// "context" of [`Keyring::blind_index`](crate::Keyring::blind_index) and
/// [`Keyring::index_terms`](crate::Keyring::index_terms).
///
/// The tags are bound to the keyring, the table, the column and the
/// normalisation (through [`context`](Self::context): the pairs `column`,
/// `normalize`, `table`), never to a row. `column` names the indexed field
/// (say `email`), not the column that stores the tags (`email_bidx`), so
/// the tag column can be renamed without re-indexing.
///
/// ```
/// use keywheel_core::{BlindIndex, Normalization};
/// let email = BlindIndex::new("users", "email").normalization(Normalization::TrimLowercase).length(12)?;
/// assert_eq!((email.len(), email.normalization_of().name()), (12, "trim-lowercase/1"));
/// assert!(BlindIndex::new("users", "email").length(4).is_err());
/// # Ok::<(), keywheel_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct BlindIndex {
    table: String,
    column: String,
    normalization: Normalization,
    len: usize,
    context: Context,
}

impl BlindIndex {
    /// Shortest allowed tag, in bytes (8: 64 bits keep accidental collisions
    /// rare up to billions of distinct values in a column).
    pub const MIN_LEN: usize = MIN_TAG_LEN;
    /// Longest tag: the whole HMAC-SHA256 output.
    pub const MAX_LEN: usize = MAX_TAG_LEN;
    /// The default tag length, 16 bytes.
    pub const DEFAULT_LEN: usize = 16;

    /// The index of `column` of `table`, with no normalisation and
    /// [`DEFAULT_LEN`](Self::DEFAULT_LEN)-byte tags.
    pub fn new(table: impl Into<String>, column: impl Into<String>) -> Self {
        let (table, column) = (table.into(), column.into());
        let normalization = Normalization::None;
        let context = Self::context_of(&table, &column, &normalization);
        BlindIndex { table, column, normalization, len: Self::DEFAULT_LEN, context }
    }

    /// With this normalisation.
    pub fn normalization(mut self, normalization: Normalization) -> Self {
        self.context = Self::context_of(&self.table, &self.column, &normalization);
        self.normalization = normalization;
        self
    }

    /// With tags of `len` bytes, [`MIN_LEN`](Self::MIN_LEN) to
    /// [`MAX_LEN`](Self::MAX_LEN). Shorter tags leak less (more unrelated
    /// plaintexts share a tag) and make lookups return a few false
    /// positives, which the application filters out by decrypting.
    pub fn length(mut self, len: usize) -> Result<Self> {
        if !(Self::MIN_LEN..=Self::MAX_LEN).contains(&len) {
            return Err(Error::InvalidArgument(format!(
                "a blind index tag is {} to {} bytes long, not {len}",
                Self::MIN_LEN,
                Self::MAX_LEN
            )));
        }
        self.len = len;
        Ok(self)
    }

    fn context_of(table: &str, column: &str, normalization: &Normalization) -> Context {
        Context::sorted(&[
            ("column", column.as_bytes()),
            ("normalize", normalization.name().as_bytes()),
            ("table", table.as_bytes()),
        ])
    }

    /// The table.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The indexed column.
    pub fn column(&self) -> &str {
        &self.column
    }

    /// The normalisation.
    pub fn normalization_of(&self) -> &Normalization {
        &self.normalization
    }

    /// The tag length in bytes (after the 8-byte header).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// The context the tags are bound to: the pairs `column`, `normalize`
    /// (the normalisation's name) and `table`.
    pub fn context(&self) -> &Context {
        &self.context
    }
}

impl fmt::Debug for BlindIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlindIndex")
            .field("table", &self.table)
            .field("column", &self.column)
            .field("normalization", &self.normalization.name())
            .field("len", &self.len)
            .finish()
    }
}

/// The tags of one plaintext under every version of a keyring that can still
/// hold values (Pending, Active, Deprecated), newest first: the terms of a
/// lookup, `WHERE email_bidx = ANY($1)`. During a rotation a row's tag is on
/// the old or the new version, and the terms match either.
///
/// ```
/// use keywheel_core::{Algorithm, BlindIndex, KeyMaterial, KeyState, Keyring, KeyringId, Normalization, Purpose};
/// let ring = Keyring::builder(KeyringId::new("acme", Purpose::Database)?)
///     .version(KeyState::Deprecated, Algorithm::Aes256Gcm, KeyMaterial::generate()?)
///     .version(KeyState::Active, Algorithm::Aes256Gcm, KeyMaterial::generate()?)
///     .build()?;
/// let email = BlindIndex::new("users", "email").normalization(Normalization::TrimLowercase);
/// let stored = ring.blind_index(b"Ann@Example.org", &email)?; // written beside the encrypted email
/// let terms = ring.index_terms(b"ann@example.org ", &email)?;
/// assert_eq!(terms.len(), 2); // v2 and v1
/// assert!(terms.contains(&stored));
/// assert!(terms.text()[0].starts_with("kw:v2:"));
/// # Ok::<(), keywheel_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct IndexTerms {
    /// Binary tags, newest version first.
    tags: Vec<Vec<u8>>,
}

impl IndexTerms {
    pub(crate) fn new(tags: Vec<Vec<u8>>) -> Self {
        IndexTerms { tags }
    }

    /// The tags in binary form (for `bytea` columns), newest version first.
    pub fn binary(&self) -> &[Vec<u8>] {
        &self.tags
    }

    /// The tags in text form `kw:v{N}:{base64}` (for text columns), newest first.
    pub fn text(&self) -> Vec<String> {
        self.tags.iter().map(|t| wire::to_text(version_of_tag(t), t)).collect()
    }

    /// The tags in `form`, as bytes (text form as its UTF-8 bytes).
    pub fn in_form(&self, form: Form) -> Vec<Vec<u8>> {
        match form {
            Form::Binary => self.tags.clone(),
            Form::Text => self.text().into_iter().map(String::into_bytes).collect(),
        }
    }

    /// How many tags (one per version that can hold values).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.tags.len()
    }

    /// Whether a stored tag (binary or text form) is one of these terms.
    pub fn contains(&self, stored: &[u8]) -> bool {
        match wire::decode(stored) {
            Ok(decoded) => self.tags.iter().any(|t| t.as_slice() == decoded.bytes.as_ref()),
            Err(_) => false,
        }
    }
}

impl fmt::Debug for IndexTerms {
    /// Versions only: tags are deterministic in the plaintext, so printing
    /// them would let logs be matched against the database.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IndexTerms")
            .field("versions", &self.tags.iter().map(|t| version_of_tag(t).get()).collect::<Vec<_>>())
            .finish()
    }
}

/// The version in a tag this crate made (its header is well formed).
fn version_of_tag(tag: &[u8]) -> KeyVersion {
    KeyVersion::new(u32::from_be_bytes([tag[4], tag[5], tag[6], tag[7]])).unwrap_or(KeyVersion::FIRST)
}

/// The keyed HMAC state of one version's index key, cloned for every tag.
pub(crate) type IndexMac = Hmac<Sha256>;

/// The index key of a version, from its derived index key bytes.
pub(crate) fn index_mac(key: &[u8; 32]) -> IndexMac {
    // HMAC takes keys of any length.
    #[allow(clippy::expect_used)]
    <IndexMac as hmac::KeyInit>::new_from_slice(key).expect("HMAC accepts a 32-byte key")
}

/// The tag of `normalized` under `mac` for `version`: `header ‖ HMAC(header ‖
/// keyring part ‖ context ‖ normalized)[..len]`.
pub(crate) fn tag(
    mac: &IndexMac,
    version: KeyVersion,
    keyring_aad_part: &[u8],
    index: &BlindIndex,
    normalized: &[u8],
) -> Result<Vec<u8>> {
    let header = wire::header(crate::Algorithm::BlindIndex, version);
    let mut mac = mac.clone();
    // One update of the whole message (header ‖ keyring ‖ context ‖
    // plaintext) from a stack buffer is cheaper than four small updates.
    // The buffer holds the plaintext: wiped after.
    let parts = [&header[..], keyring_aad_part, index.context.encoded()?, normalized];
    const STACK: usize = 256;
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len <= STACK {
        let mut buf = [0u8; STACK];
        let mut at = 0;
        for part in parts {
            buf[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        mac.update(&buf[..len]);
        buf[..len].zeroize();
    } else {
        for part in parts {
            mac.update(part);
        }
    }
    let full = mac.finalize().into_bytes();
    let mut out = Vec::with_capacity(HEADER_LEN + index.len);
    out.extend_from_slice(&header);
    out.extend_from_slice(&full[..index.len]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_normalisations() {
        let n = |s: &str, n: Normalization| n.apply(s.as_bytes()).map(|v| String::from_utf8(v.to_vec()).expect("utf8"));
        assert_eq!(n(" A b ", Normalization::None).expect("ok"), " A b ");
        assert_eq!(n("\t Ann@Example.ORG\n", Normalization::TrimLowercase).expect("ok"), "ann@example.org");
        assert_eq!(n(" Straße ＡＢＣ ﬁ ", Normalization::NfkcCasefold).expect("ok"), "strasse abc fi");
        assert_eq!(n("Strasse abc fi", Normalization::NfkcCasefold).expect("ok"), "strasse abc fi");
        assert_eq!(n("+1 (555) ０１０-9999", Normalization::DigitsOnly).expect("ok"), "15550109999");
        let err = Normalization::TrimLowercase.apply(&[0xff, 0xfe]).expect_err("not utf-8");
        assert!(matches!(err, Error::NotIndexable { .. }), "{err}");
        assert!(Normalization::None.apply(&[0xff]).is_ok(), "none takes any bytes");
    }

    #[test]
    fn names_parse_and_custom_names_are_checked() {
        for n in Normalization::BUILT_IN {
            assert_eq!(n.name().parse::<Normalization>().expect("name"), n);
            assert_eq!(n.name().split('/').next().expect("stem").parse::<Normalization>().expect("stem"), n);
        }
        assert_eq!("email".parse::<Normalization>().expect("alias"), Normalization::TrimLowercase);
        assert_eq!("phone".parse::<Normalization>().expect("alias"), Normalization::DigitsOnly);
        assert!("upper".parse::<Normalization>().is_err());
        assert!(Normalization::custom("", |b| Ok(b.to_vec())).is_err());
        assert!(Normalization::custom("has space", |b| Ok(b.to_vec())).is_err());
        assert!(Normalization::custom("digits/1", |b| Ok(b.to_vec())).is_err());
        let custom = Normalization::custom("reverse/1", |b| Ok(b.iter().rev().copied().collect())).expect("ok");
        assert_eq!(&custom.apply(b"abc").expect("ok")[..], b"cba");
        assert_eq!(format!("{custom:?}"), "Normalization(reverse/1)");
    }

    #[test]
    fn index_context_binds_table_column_and_normalisation() {
        let a = BlindIndex::new("users", "email");
        let b = a.clone().normalization(Normalization::TrimLowercase);
        assert_ne!(a.context(), b.context());
        let pairs = b.context().pairs().expect("valid");
        let names: Vec<_> = pairs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["column", "normalize", "table"]);
        assert_eq!(pairs[1].1, b"trim-lowercase/1");
        assert_eq!(b.len(), 16);
        for len in [0, 7, 33] {
            assert!(BlindIndex::new("t", "c").length(len).is_err(), "{len}");
        }
        assert_eq!(BlindIndex::new("t", "c").length(32).expect("ok").len(), 32);
    }
}
