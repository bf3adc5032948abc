//! Re-encryption of stored values under the Active version, one at a time
//! or a batch at once (the rotation engine's path), keeping each value's form.

use zeroize::Zeroize;

use super::{Keyring, Quota, Sealer};
use crate::cipher::VersionCipher;
use crate::nonce::Nonces;
use crate::wire::{self, Form, HEADER_LEN};
use crate::{BlindIndex, Context, Error, KeyVersion, Result};

/// One item of [`Keyring::reencrypt_batch`]: a stored value and its context,
/// and the blind index stored beside it, if any.
pub(crate) struct BatchItem<'v> {
    pub(crate) value: &'v [u8],
    pub(crate) context: &'v Context,
    /// The index whose tag is wanted under the Active version, and whether
    /// the stored tag is already on the version to skip. A value on that
    /// version whose tag is not is decrypted only to compute the tag.
    pub(crate) index: Option<(&'v BlindIndex, bool)>,
}

impl<'v> BatchItem<'v> {
    /// A value without an index.
    pub(crate) fn value(value: &'v [u8], context: &'v Context) -> Self {
        BatchItem { value, context, index: None }
    }
}

impl Keyring {
    /// Decrypt a value and encrypt it again under the Active version, keeping
    /// its form (binary stays binary, text stays text). The value is decrypted
    /// in place in the buffer that becomes the new value, so on success no
    /// copy of the plaintext is left behind; on failure that buffer is zeroized.
    pub fn reencrypt(&self, value: &[u8], context: &Context) -> Result<Vec<u8>> {
        match self.reencrypt_one(value, context) {
            Ok((version, new)) => {
                self.count_decryption(version);
                Ok(new)
            }
            Err(e) => Err(self.meter.failed(e)),
        }
    }

    /// [`reencrypt`](Self::reencrypt), and the version the value was on.
    fn reencrypt_one(&self, value: &[u8], context: &Context) -> Result<(KeyVersion, Vec<u8>)> {
        let decoded = wire::decode(value)?;
        let opener = self.opener(&decoded)?;
        let ctx = context.encoded()?;
        let sealer = match self.sealer() {
            Ok(sealer) => sealer,
            Err(e) => {
                // Report a value that does not decrypt before the keyring's own problem.
                self.open(&decoded, context)?;
                return Err(e);
            }
        };
        let mut quota = Quota::reserve(sealer.slot, 1);
        let new = with_aad_buffer(&self.id_aad, ctx, |aad| {
            crate::nonce::protected(|nonces| {
                quota.restart();
                reencrypt_in_place(opener, &sealer, &decoded, aad, &mut quota, nonces, |_| Ok(None::<()>))
                    .map(|(v, _)| v)
            })?
        })?;
        Ok((decoded.info.version, new))
    }

    /// Re-encrypt many values under the Active version, each exactly as
    /// [`reencrypt`](Self::reencrypt) would (same form, same errors), with
    /// per-call instead of per-value overhead: one fork check for all the
    /// nonces (see the [manual](crate::manual#4-nonces)), one update of the usage
    /// counter, one associated-data buffer. The rotation engine re-encrypts
    /// every batch through this.
    ///
    /// ```
    /// use keywheel_core::{Algorithm, Context, KeyMaterial, KeyState, Keyring, KeyringId, Purpose};
    /// let id = KeyringId::new("acme", Purpose::Token)?;
    /// let old = KeyMaterial::from_slice(&[1; 32])?;
    /// let v1 = Keyring::builder(id.clone())
    ///     .version(KeyState::Active, Algorithm::Aes256Gcm, KeyMaterial::from_slice(&[1; 32])?)
    ///     .build()?;
    /// let v2 = Keyring::builder(id)
    ///     .version(KeyState::Deprecated, Algorithm::Aes256Gcm, old)
    ///     .version(KeyState::Active, Algorithm::Aes256Gcm, KeyMaterial::generate()?)
    ///     .build()?;
    /// let ctx = [Context::field("users", "token", "1"), Context::field("users", "token", "2")];
    /// let values = [v1.encrypt(b"a", &ctx[0])?, v1.encrypt_text(b"b", &ctx[1])?.into_bytes()];
    /// let batch: Vec<(&[u8], &Context)> = values.iter().map(Vec::as_slice).zip(&ctx).collect();
    /// let rotated = v2.reencrypt_many(&batch).into_iter().collect::<Result<Vec<_>, _>>()?;
    /// assert!(!v2.needs_rotation(&rotated[0])?);
    /// assert!(rotated[1].starts_with(b"kw:v2:"));
    /// assert_eq!(&v2.decrypt(&rotated[1], &ctx[1])?[..], b"b");
    /// # Ok::<(), keywheel_core::Error>(())
    /// ```
    pub fn reencrypt_many(&self, values: &[(&[u8], &Context)]) -> Vec<Result<Vec<u8>>> {
        match self.reencrypt_batch(values, None, Vec::new(), |&(value, context)| Some(BatchItem::value(value, context)))
        {
            Ok(Reencrypted { values: new, errors, .. }) => {
                let mut results: Vec<Result<Vec<u8>>> = new.into_iter().map(Ok).collect();
                for (index, error) in errors {
                    results[index] = Err(self.meter.failed(error));
                }
                results
            }
            // `protected` only fails with `Error::Rng` (fork after fork).
            Err(_) => values.iter().map(|_| Err(Error::Rng)).collect(),
        }
    }

    /// The batch behind [`reencrypt_many`](Self::reencrypt_many) and the
    /// rotation engine: re-encrypts `value_of(item)` for every item that has
    /// one and is not on version `skip`, all in one protected nonce operation
    /// (so `value_of` must give the same answers when the operation is run
    /// again). An item with a blind index also gets its tag under the Active
    /// version, computed from the plaintext met on the way (a value already
    /// on `skip` whose tag is not is decrypted for its tag alone, and keeps
    /// its bytes). Results are indexed like `items`, in a compact form (no
    /// `Result` per item): see [`Reencrypted`]; their `values` go into
    /// `buffer` (cleared first), so that a caller can reuse one allocation
    /// for every batch.
    pub(crate) fn reencrypt_batch<'v, T>(
        &self,
        items: &'v [T],
        skip: Option<KeyVersion>,
        buffer: Vec<Vec<u8>>,
        value_of: impl Fn(&'v T) -> Option<BatchItem<'v>>,
    ) -> Result<Reencrypted> {
        let Ok(sealer) = self.sealer() else {
            return Ok(self.reencrypt_batch_unsealed(items, skip, buffer, value_of));
        };
        let mut quota = Quota::reserve(sealer.slot, items.len() as u64);
        let mut buffer = Some(buffer);
        // header placeholder ‖ keyring part ‖ context, reused for every value.
        let mut aad = vec![0u8; HEADER_LEN];
        aad.extend_from_slice(&self.id_aad);
        crate::nonce::protected(|nonces| {
            quota.restart();
            // A retry (after a fork) starts from a fresh buffer: the first one
            // was dropped with the discarded attempt.
            let mut values = buffer.take().unwrap_or_default();
            values.clear();
            values.reserve(items.len());
            let mut out = Reencrypted { values, errors: Vec::new(), skipped: Vec::new(), tags: Vec::new() };
            for (index, item) in items.iter().enumerate() {
                let Some(BatchItem { value, context, index: blind }) = value_of(item) else {
                    out.values.push(Vec::new());
                    continue;
                };
                let one = wire::decode(value).map_err(Error::from).and_then(|decoded| {
                    if Some(decoded.info.version) == skip {
                        return match blind {
                            Some((blind, false)) => {
                                let plaintext = self.open(&decoded, context)?;
                                self.count_decryption(decoded.info.version);
                                let tag = self.tag_under(sealer.slot, blind, &plaintext)?;
                                Ok(Some((value.to_vec(), Some(tag))))
                            }
                            _ => Ok(None),
                        };
                    }
                    let blind = blind.map(|(blind, _)| blind);
                    let done =
                        self.reencrypt_into_batch(&decoded, context, blind, &sealer, &mut quota, &mut aad, nonces)?;
                    self.count_decryption(decoded.info.version);
                    Ok(Some(done))
                });
                match one {
                    Ok(Some((new, tag))) => {
                        if let Some(tag) = tag {
                            out.tags.push((index, tag));
                        }
                        out.values.push(new);
                    }
                    Ok(None) => {
                        out.values.push(Vec::new());
                        out.skipped.push(index);
                    }
                    Err(error) => {
                        out.values.push(Vec::new());
                        out.errors.push((index, error));
                    }
                }
            }
            out
        })
    }

    /// [`reencrypt_batch`](Self::reencrypt_batch) on a keyring that cannot
    /// encrypt (no usable Active AEAD version): each value gets the error of
    /// the single-value path, in its usual order (a value that does not
    /// decrypt says so first). No nonce is drawn, so no fork check is needed.
    fn reencrypt_batch_unsealed<'v, T>(
        &self,
        items: &'v [T],
        skip: Option<KeyVersion>,
        mut values: Vec<Vec<u8>>,
        value_of: impl Fn(&'v T) -> Option<BatchItem<'v>>,
    ) -> Reencrypted {
        values.clear();
        let mut out = Reencrypted { values, errors: Vec::new(), skipped: Vec::new(), tags: Vec::new() };
        for (index, item) in items.iter().enumerate() {
            out.values.push(Vec::new());
            let Some(BatchItem { value, context, .. }) = value_of(item) else { continue };
            match wire::version_of(value) {
                Ok(version) if Some(version) == skip => out.skipped.push(index),
                _ => match self.reencrypt(value, context) {
                    Ok(new) => out.values[index] = new,
                    Err(error) => out.errors.push((index, error)),
                },
            }
        }
        out
    }

    /// One value of [`reencrypt_batch`](Self::reencrypt_batch); `aad` is the
    /// batch's buffer, `HEADER_LEN` bytes and the keyring part, then the
    /// previous value's context (replaced here).
    /// With `blind`, also the value's tag under the Active version, computed
    /// from the plaintext between decryption and encryption.
    #[allow(clippy::too_many_arguments)]
    fn reencrypt_into_batch(
        &self,
        decoded: &wire::Decoded<'_>,
        context: &Context,
        blind: Option<&BlindIndex>,
        sealer: &Sealer<'_>,
        quota: &mut Quota<'_>,
        aad: &mut Vec<u8>,
        nonces: &mut Nonces,
    ) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
        let opener = self.opener(decoded)?;
        let ctx = context.encoded()?;
        aad.truncate(HEADER_LEN + self.id_aad.len());
        aad.extend_from_slice(ctx);
        reencrypt_in_place(opener, sealer, decoded, aad, quota, nonces, |plaintext| {
            blind.map(|blind| self.tag_under(sealer.slot, blind, plaintext)).transpose()
        })
    }
}

/// What [`Keyring::reencrypt_batch`] returns.
#[derive(Debug)]
pub(crate) struct Reencrypted {
    /// The new value of each item; empty for items without a value, skipped
    /// items and failures.
    pub(crate) values: Vec<Vec<u8>>,
    /// The failures, by item index, in index order.
    pub(crate) errors: Vec<(usize, Error)>,
    /// The items already on the version to skip, in index order.
    pub(crate) skipped: Vec<usize>,
    /// The blind index tags of the items that asked for one, by item index,
    /// in index order (binary form).
    pub(crate) tags: Vec<(usize, Vec<u8>)>,
}

/// Call `f` with `HEADER_LEN placeholder bytes ‖ keyring part ‖ context`, in a
/// stack buffer when it fits (the usual case).
fn with_aad_buffer<R>(keyring: &[u8], context: &[u8], f: impl FnOnce(&mut [u8]) -> R) -> R {
    const STACK: usize = 384;
    let len = HEADER_LEN + keyring.len() + context.len();
    if len <= STACK {
        let mut buf = [0u8; STACK];
        buf[HEADER_LEN..HEADER_LEN + keyring.len()].copy_from_slice(keyring);
        buf[HEADER_LEN + keyring.len()..len].copy_from_slice(context);
        f(&mut buf[..len])
    } else {
        f(&mut [&[0u8; HEADER_LEN][..], keyring, context].concat())
    }
}

/// Re-encrypt one value under `sealer`, keeping its form: its ciphertext is
/// copied into the buffer of the new value, decrypted there with `opener` and
/// encrypted there again, so the plaintext never exists anywhere else; on any
/// failure after the copy the buffer is zeroized. `aad` is `HEADER_LEN bytes
/// (overwritten with each header) ‖ keyring part ‖ context`. `on_plaintext`
/// sees the plaintext between decryption and encryption (the blind index
/// tag is computed there); what it returns comes back with the new value.
fn reencrypt_in_place<X>(
    opener: &VersionCipher,
    sealer: &Sealer<'_>,
    decoded: &wire::Decoded<'_>,
    aad: &mut [u8],
    quota: &mut Quota<'_>,
    nonces: &mut Nonces,
    on_plaintext: impl FnOnce(&[u8]) -> Result<Option<X>>,
) -> Result<(Vec<u8>, Option<X>)> {
    let body = decoded.body();
    let (ciphertext, tag) = body.split_at(body.len() - decoded.info.algorithm.tag_len());
    let mut out = sealer.begin(ciphertext.len());
    out.extend_from_slice(ciphertext);
    let prefix = sealer.prefix_len();
    aad[..HEADER_LEN].copy_from_slice(decoded.header());
    let mut seen = None;
    let result = opener
        .open(decoded.nonce(), aad, &mut out[prefix..], tag)
        // `out` now holds the plaintext, until `seal` overwrites it.
        .and_then(|()| on_plaintext(&out[prefix..]))
        .and_then(|x| {
            seen = x;
            quota.take()
        })
        .and_then(|()| nonces.fill(&mut out[HEADER_LEN..prefix]))
        .and_then(|()| {
            aad[..HEADER_LEN].copy_from_slice(&sealer.header);
            sealer.seal(aad, &mut out)
        });
    if let Err(e) = result {
        out.zeroize();
        return Err(e);
    }
    let new = match decoded.info.form {
        Form::Binary => out,
        Form::Text => wire::to_text(sealer.slot.summary.version, &out).into_bytes(),
    };
    Ok((new, seen))
}
