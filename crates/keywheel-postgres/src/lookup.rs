//! [`IndexParam`]: the terms of a blind-index lookup as one SQL array parameter.

use std::error::Error as StdError;
use std::fmt;

use bytes::BytesMut;
use keywheel_core::{Form, IndexTerms};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

/// The terms of a blind-index lookup ([`IndexTerms`]: one tag per version that
/// can still hold values, newest first) as one array parameter, `bytea[]` for
/// a [`Form::Binary`] index column or `text[]` for a [`Form::Text`] one:
/// `WHERE email_bidx = ANY($1)` finds a row whatever version its tag is on,
/// also in the middle of a rotation (the
/// [manual](keywheel_core::manual#13-searchable-fields-blind-indexes)).
///
/// Its `Debug` shows the versions only: tags are deterministic in the
/// plaintext, and must not end up in logs.
///
/// ```no_run
/// # async fn demo(kw: keywheel_core::Keywheel, client: keywheel_postgres::tokio_postgres::Client) -> keywheel_core::Result<()> {
/// use keywheel_core::{BlindIndex, Form, KeyringId, Normalization, Purpose};
/// use keywheel_postgres::IndexParam;
///
/// let email = BlindIndex::new("users", "email").normalization(Normalization::TrimLowercase);
/// let ring = kw.keyring(&KeyringId::new("acme", Purpose::Database)?).await?;
/// let terms = IndexParam::new(&ring.index_terms(b"Ann@Example.org", &email)?, Form::Binary);
/// let rows = client
///     .query("SELECT id, email FROM users WHERE email_bidx = ANY($1)", &[&terms])
///     .await
///     .map_err(|e| keywheel_core::Error::backend("users", e.to_string(), true))?;
/// # let _ = rows; Ok(()) }
/// ```
///
/// A parameter of the wrong array type is an error of the query, not a panic:
///
/// ```
/// use keywheel_core::{Algorithm, BlindIndex, Form, KeyMaterial, KeyState, Keyring, KeyringId, Purpose};
/// use keywheel_postgres::IndexParam;
/// use keywheel_postgres::tokio_postgres::types::{ToSql, Type};
///
/// let ring = Keyring::builder(KeyringId::new("acme", Purpose::Database)?)
///     .version(KeyState::Active, Algorithm::Aes256Gcm, KeyMaterial::generate()?)
///     .build()?;
/// let terms = ring.index_terms(b"ann@example.org", &BlindIndex::new("users", "email"))?;
/// let param = IndexParam::new(&terms, Form::Text);
/// assert_eq!(format!("{param:?}"), "IndexParam { form: Text, versions: [1] }");
/// let mut buf = bytes::BytesMut::new();
/// assert!(param.to_sql_checked(&Type::TEXT_ARRAY, &mut buf).is_ok());
/// assert!(param.to_sql_checked(&Type::BYTEA_ARRAY, &mut buf).is_err());
/// # Ok::<(), keywheel_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct IndexParam {
    terms: IndexTerms,
    form: Form,
    /// The terms in `form` (text forms as UTF-8 bytes).
    encoded: Encoded,
}

#[derive(Clone, PartialEq, Eq)]
enum Encoded {
    Binary(Vec<Vec<u8>>),
    Text(Vec<String>),
}

impl IndexParam {
    /// The terms, in the form of the index column.
    pub fn new(terms: &IndexTerms, form: Form) -> Self {
        let encoded = match form {
            Form::Binary => Encoded::Binary(terms.binary().to_vec()),
            Form::Text => Encoded::Text(terms.text()),
        };
        IndexParam { terms: terms.clone(), form, encoded }
    }

    /// The form of the index column the parameter is for.
    pub fn form(&self) -> Form {
        self.form
    }

    /// The terms.
    pub fn terms(&self) -> &IndexTerms {
        &self.terms
    }
}

impl fmt::Debug for IndexParam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let versions: Vec<u32> =
            self.terms.binary().iter().filter_map(|t| keywheel_core::version_of(t).ok()).map(|v| v.get()).collect();
        f.debug_struct("IndexParam").field("form", &self.form).field("versions", &versions).finish()
    }
}

impl ToSql for IndexParam {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        // Checked: a binary parameter for a text[] column (or the reverse) is a
        // `WrongType` error, not a malformed message.
        match &self.encoded {
            Encoded::Binary(tags) => tags.to_sql_checked(ty, out),
            Encoded::Text(tags) => tags.to_sql_checked(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <Vec<Vec<u8>> as ToSql>::accepts(ty) || <Vec<String> as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}
