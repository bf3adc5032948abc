//! [`RowFields`]: a row's fields encrypted and decrypted with their context.

use keywheel_core::{Context, Keyring, Plaintext, Result};

use crate::{Encrypted, EncryptedText};

/// The encrypted fields of one row: encrypt or decrypt a column's value bound
/// to [`Context::field(table, column, row)`](Context::field) in one call, the
/// context a [`SqlxRecordSource`](crate::SqlxRecordSource) over the table
/// uses when it rotates the value (table name without schema unless the
/// [`TableSpec`](crate::TableSpec) says otherwise, the column's name, the
/// primary key as text: decimal for `bigint`, lower-case hyphenated for
/// `uuid`, the text itself for `text`).
///
/// A value encrypted for one row or column does not decrypt for another: a
/// ciphertext copied to another row fails with
/// [`Error::Decrypt`](keywheel_core::Error::Decrypt).
///
/// ```
/// use keywheel_core::{Algorithm, KeyMaterial, KeyState, Keyring, KeyringId, Purpose};
/// use keywheel_sqlx::RowFields;
///
/// let ring = Keyring::builder(KeyringId::new("acme", Purpose::Database)?)
///     .version(KeyState::Active, Algorithm::Aes256Gcm, KeyMaterial::generate()?)
///     .build()?;
/// let row = RowFields::new(&ring, "users", 42);
/// let email = row.encrypt("email", b"ann@example.org")?; // for a bytea column
/// let token = row.encrypt_text("api_token", b"s3cret")?; // for a text column
/// assert_eq!(&*row.decrypt("email", &email)?, b"ann@example.org");
/// assert_eq!(&*row.decrypt("api_token", &token)?, b"s3cret");
/// // Bound to its row and column:
/// assert!(RowFields::new(&ring, "users", 43).decrypt("email", &email).is_err());
/// assert!(row.decrypt("api_token", &email).is_err());
/// # Ok::<(), keywheel_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct RowFields<'a> {
    keyring: &'a Keyring,
    table: &'a str,
    row: String,
}

impl<'a> RowFields<'a> {
    /// The fields of row `row` (its primary key, written as the record
    /// source writes it: `42`, `a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11`, …) of
    /// `table`, under `keyring` (a snapshot from
    /// [`Keywheel::keyring`](keywheel_core::Keywheel::keyring)).
    pub fn new(keyring: &'a Keyring, table: &'a str, row: impl std::fmt::Display) -> Self {
        RowFields { keyring, table, row: row.to_string() }
    }

    /// The row id, as text.
    pub fn row(&self) -> &str {
        &self.row
    }

    /// The context of `column` in this row: `Context::field(table, column, row)`.
    pub fn context(&self, column: &str) -> Context {
        Context::field(self.table, column, &self.row)
    }

    /// Encrypt `plaintext` for `column` of this row, binary form (a `bytea` column).
    pub fn encrypt(&self, column: &str, plaintext: &[u8]) -> Result<Encrypted> {
        let value = self.keyring.encrypt(plaintext, &self.context(column))?;
        Ok(Encrypted::new(value)?)
    }

    /// Encrypt `plaintext` for `column` of this row, text form (a `text` column).
    pub fn encrypt_text(&self, column: &str, plaintext: &[u8]) -> Result<EncryptedText> {
        let value = self.keyring.encrypt_text(plaintext, &self.context(column))?;
        Ok(EncryptedText::new(value)?)
    }

    /// Decrypt `value` (either form: [`Encrypted`], [`EncryptedText`], bytes)
    /// read from `column` of this row.
    pub fn decrypt(&self, column: &str, value: &impl AsRef<[u8]>) -> Result<Plaintext> {
        self.keyring.decrypt(value.as_ref(), &self.context(column))
    }
}
