//! # keywheel-pkcs11
//!
//! A [`KeyEncryptionKey`] whose master key never leaves a PKCS#11 token (an
//! HSM, a smart card, SoftHSM2): version material is wrapped with AES-256-GCM
//! computed *inside* the token (`CKM_AES_GCM`, random 96-bit IV, the keyring
//! id and version as additional authenticated data), and the
//! [`IntegrityKey`] that authenticates keyring records and the audit chain is
//! derived from an AES-CMAC (`CKM_AES_CMAC`) of a fixed label, also computed
//! inside the token. The key is found by token and object label; it should be
//! sensitive and non-extractable ([`Pkcs11Kek::generate_key`] makes one so).
//! See the [manual](keywheel_core::manual#kms-and-hsm-master-keys).
//!
//! ```no_run
//! use std::sync::Arc;
//! use keywheel_pkcs11::{Pkcs11Config, Pkcs11Kek};
//!
//! # async fn demo() -> keywheel_core::Result<()> {
//! let config = Pkcs11Config::from_uri(
//!     "pkcs11:token=keywheel;object=kek-2026?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=env:HSM_PIN",
//! )?;
//! let kek = Arc::new(Pkcs11Kek::open(config).await?);
//! // Then: Keywheel::builder().kek(kek)…
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use keywheel_core::{Error, IntegrityKey, KeyEncryptionKey, KeyMaterial, KeyVersion, KeyringId, Result, WrappedKey};
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The URI scheme of a PKCS#11 KEK (RFC 7512).
pub const URI_SCHEME: &str = "pkcs11:";
/// The environment variable read for the PIN when the URI gives none.
pub const PIN_ENV: &str = "KEYWHEEL_PKCS11_PIN";
/// The environment variable read for the module path when the URI gives none.
pub const MODULE_ENV: &str = "KEYWHEEL_PKCS11_MODULE";

const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;
const WRAP_AAD_LABEL: &[u8] = b"keywheel/pkcs11-wrap/v1";
/// The label whose in-token CMAC is the integrity key's secret.
const INTEGRITY_LABEL: &[u8] = b"keywheel/integrity/pkcs11/v1";
/// The label whose in-token CMAC, hashed, is the key check value.
const KEY_CHECK_LABEL: &[u8] = b"keywheel/key-check/pkcs11/v1";

/// Which token, which key, and how to log in.
#[derive(Clone)]
#[non_exhaustive]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module (e.g. `/usr/lib/softhsm/libsofthsm2.so`).
    pub module_path: PathBuf,
    /// The token's label (`token=`); the first token with it is used.
    pub token_label: Option<String>,
    /// The slot id (`slot-id=`), when no token label is given.
    pub slot_id: Option<u64>,
    /// The AES key's label (`object=`).
    pub object_label: String,
    /// The user PIN (`pin-source=` / `pin-value=`, else [`PIN_ENV`]); `None`
    /// logs in to nothing (a token that needs no login).
    pub pin: Option<SecretString>,
    /// The id recorded with every wrapped key (default `pkcs11`).
    pub kek_id: String,
}

impl fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Config")
            .field("module_path", &self.module_path)
            .field("token_label", &self.token_label)
            .field("slot_id", &self.slot_id)
            .field("object_label", &self.object_label)
            .field("pin", &self.pin.as_ref().map(|_| "<redacted>"))
            .field("kek_id", &self.kek_id)
            .finish()
    }
}

fn config_error(message: impl Into<String>) -> Error {
    Error::Kek { kek_id: Pkcs11Kek::DEFAULT_ID.into(), message: message.into(), retryable: false }
}

/// RFC 3986 percent-decoding of one URI attribute value.
fn percent_decode(value: &str) -> Result<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| config_error(format!("bad percent-encoding in KEK URI value {value:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| config_error("a KEK URI value is not UTF-8 once decoded"))
}

impl Pkcs11Config {
    /// The key labelled `object_label` on the token labelled `token_label`,
    /// through the module at `module_path`; no PIN yet ([`pin`](Self::pin)).
    pub fn new(
        module_path: impl Into<PathBuf>,
        token_label: impl Into<String>,
        object_label: impl Into<String>,
    ) -> Self {
        Pkcs11Config {
            module_path: module_path.into(),
            token_label: Some(token_label.into()),
            slot_id: None,
            object_label: object_label.into(),
            pin: None,
            kek_id: Pkcs11Kek::DEFAULT_ID.into(),
        }
    }

    /// Log in with this user PIN.
    pub fn pin(mut self, pin: SecretString) -> Self {
        self.pin = Some(pin);
        self
    }

    /// Record another id with the wrapped keys than `pkcs11`.
    pub fn kek_id(mut self, id: impl Into<String>) -> Self {
        self.kek_id = id.into();
        self
    }

    /// Parse an RFC 7512 style URI:
    /// `pkcs11:token=<label>;object=<label>[;slot-id=<n>][?module-path=<path>][&pin-source=env:<VAR>|file:<path>][&pin-value=<pin>]`.
    /// Values are percent-decoded. Without `module-path`, the module comes
    /// from `KEYWHEEL_PKCS11_MODULE`; without a PIN attribute, from
    /// `KEYWHEEL_PKCS11_PIN` if set. `pin-value` puts the PIN in the URI
    /// (and so in configuration files and process lists): prefer
    /// `pin-source`. Errors name the attribute, never a PIN.
    ///
    /// ```
    /// let c = keywheel_pkcs11::Pkcs11Config::from_uri(
    ///     "pkcs11:token=keywheel%20test;object=kek?module-path=/usr/lib/softhsm/libsofthsm2.so",
    /// )?;
    /// assert_eq!(c.token_label.as_deref(), Some("keywheel test"));
    /// assert_eq!(c.object_label, "kek");
    /// # Ok::<(), keywheel_core::Error>(())
    /// ```
    pub fn from_uri(uri: &str) -> Result<Self> {
        Self::from_uri_with(uri, |var| std::env::var(var).ok())
    }

    fn from_uri_with(uri: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let rest = uri
            .strip_prefix(URI_SCHEME)
            .ok_or_else(|| config_error(format!("a PKCS#11 KEK URI starts with {URI_SCHEME}")))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (mut token, mut object, mut slot_id) = (None, None, None);
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attr.split_once('=').unwrap_or((attr, ""));
            let value = percent_decode(value)?;
            match name {
                "token" => token = Some(value),
                "object" => object = Some(value),
                "slot-id" => {
                    slot_id = Some(value.parse::<u64>().map_err(|_| config_error("slot-id is not a number"))?);
                }
                // RFC 7512 attributes that narrow the match further; keywheel
                // only needs token and object, and refuses what it would ignore.
                other => {
                    return Err(config_error(format!(
                        "unsupported PKCS#11 URI path attribute {other:?} (supported: token, object, slot-id)"
                    )));
                }
            }
        }
        let (mut module, mut pin) = (None, None);
        for attr in query.split('&').filter(|a| !a.is_empty()) {
            let (name, value) = attr.split_once('=').unwrap_or((attr, ""));
            match name {
                "module-path" => module = Some(PathBuf::from(percent_decode(value)?)),
                "pin-value" => pin = Some(SecretString::from(percent_decode(value)?)),
                "pin-source" => pin = Some(read_pin_source(&percent_decode(value)?, &env)?),
                other => {
                    return Err(config_error(format!(
                        "unsupported PKCS#11 URI query attribute {other:?} (supported: module-path, pin-source, \
                         pin-value)"
                    )));
                }
            }
        }
        let object = object.ok_or_else(|| config_error("the PKCS#11 KEK URI needs object=<key label>"))?;
        if token.is_none() && slot_id.is_none() {
            return Err(config_error("the PKCS#11 KEK URI needs token=<token label> (or slot-id=<n>)"));
        }
        let module = match module {
            Some(m) => m,
            None => PathBuf::from(env(MODULE_ENV).ok_or_else(|| {
                config_error(format!("the PKCS#11 KEK URI needs ?module-path=<library path> (or {MODULE_ENV})"))
            })?),
        };
        let pin = pin.or_else(|| env(PIN_ENV).map(SecretString::from));
        Ok(Pkcs11Config {
            module_path: module,
            token_label: token,
            slot_id,
            object_label: object,
            pin,
            kek_id: Pkcs11Kek::DEFAULT_ID.into(),
        })
    }
}

fn read_pin_source(source: &str, env: &impl Fn(&str) -> Option<String>) -> Result<SecretString> {
    if let Some(var) = source.strip_prefix("env:") {
        return env(var)
            .map(SecretString::from)
            .ok_or_else(|| config_error(format!("pin-source: environment variable {var} is not set")));
    }
    let path = source.strip_prefix("file:").unwrap_or(source);
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| config_error(format!("pin-source: cannot read PIN file {path}: {e}")))?,
    );
    Ok(SecretString::from(text.trim_end_matches(['\r', '\n']).to_owned()))
}

/// One initialised context per module path for the life of the process
/// (`C_Initialize` may run once per process; every KEK on the module shares it).
fn context(module: &Path) -> Result<Pkcs11> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut contexts = CONTEXTS.get_or_init(Default::default).lock().map_err(|_| config_error("poisoned lock"))?;
    if let Some(ctx) = contexts.get(module) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(module)
        .map_err(|e| config_error(format!("cannot load PKCS#11 module {}: {e}", module.display())))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(config_error(format!("C_Initialize of {}: {e}", module.display()))),
    }
    contexts.insert(module.to_owned(), ctx.clone());
    Ok(ctx)
}

/// A KEK in a PKCS#11 token. See the [crate documentation](crate).
///
/// * `wrap`: `CKM_AES_GCM` in the token, a random 96-bit IV, AAD = label ‖
///   keyring id ‖ version; stored as IV ‖ ciphertext ‖ tag.
/// * `unwrap`: the same in reverse; a key moved to another keyring or
///   version fails the tag check in the token. One call per version per load.
/// * key check value: SHA-256 of the token's CMAC of a fixed label (16 bytes,
///   hex): another key under the same label is [`Error::WrongMasterKey`].
/// * integrity key: derived from the token's CMAC of another fixed label,
///   computed once at [`open`](Self::open) and kept in memory only.
///
/// Errors are typed: [`Error::KekUnavailable`] (token removed, device error,
/// session lost: retryable, the session is reopened on the next call),
/// [`Error::KekAccessDenied`] (PIN wrong or locked, key function not
/// permitted).
pub struct Pkcs11Kek {
    config: Pkcs11Config,
    inner: Arc<Inner>,
    key_check: String,
    integrity: IntegrityKey,
}

struct Inner {
    ctx: Pkcs11,
    slot: Slot,
    object_label: String,
    pin: Option<SecretString>,
    kek_id: String,
    /// The open, logged-in session and the key's handle in it; `None` after a
    /// fault, reopened by the next call.
    session: Mutex<Option<(Session, ObjectHandle)>>,
}

impl fmt::Debug for Pkcs11Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Kek")
            .field("id", &self.config.kek_id)
            .field("token", &self.config.token_label)
            .field("object", &self.config.object_label)
            .field("key_check", &self.key_check)
            .finish_non_exhaustive()
    }
}

/// A PKCS#11 failure as a typed keywheel error (never a PIN or key byte).
fn classify(kek_id: &str, what: &str, err: CkError) -> Error {
    let kek_id = kek_id.to_owned();
    let message = format!("{what}: {err}");
    match err {
        CkError::Pkcs11(rv, _) => match rv {
            RvError::DeviceRemoved
            | RvError::DeviceError
            | RvError::DeviceMemory
            | RvError::TokenNotPresent
            | RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::SessionCount
            | RvError::FunctionFailed
            | RvError::HostMemory
            | RvError::CryptokiNotInitialized => Error::KekUnavailable { kek_id, message },
            RvError::PinIncorrect | RvError::PinLocked | RvError::PinExpired | RvError::UserNotLoggedIn => {
                Error::KekAccessDenied {
                    kek_id,
                    message,
                    hint: "check the user PIN (pin-source or KEYWHEEL_PKCS11_PIN); a locked PIN needs the SO to \
                           reset it"
                        .into(),
                }
            }
            RvError::KeyFunctionNotPermitted | RvError::KeyTypeInconsistent | RvError::MechanismInvalid => {
                Error::KekAccessDenied {
                    kek_id,
                    message,
                    hint: "the key must be an AES key with CKA_ENCRYPT, CKA_DECRYPT and CKA_SIGN true, on a token \
                           that supports CKM_AES_GCM and CKM_AES_CMAC"
                        .into(),
                }
            }
            _ => Error::Kek { kek_id, message, retryable: false },
        },
        _ => Error::Kek { kek_id, message, retryable: false },
    }
}

impl Inner {
    fn open_session(&self) -> Result<(Session, ObjectHandle)> {
        let session = self.ctx.open_rw_session(self.slot).map_err(|e| classify(&self.kek_id, "C_OpenSession", e))?;
        if let Some(pin) = &self.pin {
            match session.login(UserType::User, Some(pin)) {
                Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
                Err(e) => return Err(classify(&self.kek_id, "C_Login", e)),
            }
        }
        let found = session
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Label(self.object_label.as_bytes().to_vec()),
            ])
            .map_err(|e| classify(&self.kek_id, "C_FindObjects", e))?;
        match found.as_slice() {
            [key] => Ok((session, *key)),
            [] => Err(Error::Kek {
                kek_id: self.kek_id.clone(),
                message: format!(
                    "no AES key labelled {:?} on the token (is the PIN given, is the label right?)",
                    self.object_label
                ),
                retryable: false,
            }),
            _ => Err(Error::Kek {
                kek_id: self.kek_id.clone(),
                message: format!(
                    "{} AES keys are labelled {:?}: the label must name one",
                    found.len(),
                    self.object_label
                ),
                retryable: false,
            }),
        }
    }

    /// Run `op` on the session (opened first if needed); a fault that loses
    /// the session drops it, so the next call opens a new one.
    fn with_session<T>(&self, op: impl FnOnce(&Session, ObjectHandle) -> Result<T>) -> Result<T> {
        let mut guard = self.session.lock().map_err(|_| config_error("poisoned lock"))?;
        if guard.is_none() {
            *guard = Some(self.open_session()?);
        }
        let Some((session, key)) = guard.as_ref() else { return Err(config_error("no session")) };
        let result = op(session, *key);
        if matches!(result, Err(Error::KekUnavailable { .. })) {
            *guard = None;
        }
        result
    }

    fn cmac(&self, label: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        self.with_session(|s, key| {
            s.sign(&Mechanism::AesCMac, key, label)
                .map(Zeroizing::new)
                .map_err(|e| classify(&self.kek_id, "C_Sign (CMAC)", e))
        })
    }
}

impl Pkcs11Kek {
    /// The default id of a PKCS#11 KEK.
    pub const DEFAULT_ID: &'static str = "pkcs11";

    /// Open the token, log in, find the key and compute its key check value
    /// and integrity key (two CMACs in the token). Runs on the blocking pool.
    pub async fn open(config: Pkcs11Config) -> Result<Self> {
        tokio::task::spawn_blocking(move || Self::open_blocking(config))
            .await
            .map_err(|e| config_error(format!("the PKCS#11 task failed: {e}")))?
    }

    /// [`open`](Self::open), on the calling thread.
    pub fn open_blocking(config: Pkcs11Config) -> Result<Self> {
        let ctx = context(&config.module_path)?;
        let slot = find_slot(&ctx, &config)?;
        let inner = Arc::new(Inner {
            ctx,
            slot,
            object_label: config.object_label.clone(),
            pin: config.pin.clone(),
            kek_id: config.kek_id.clone(),
            session: Mutex::new(None),
        });
        let check = inner.cmac(KEY_CHECK_LABEL)?;
        let key_check = Sha256::digest(check.as_slice())[..16].iter().map(|b| format!("{b:02x}")).collect();
        let integrity = IntegrityKey::derive(&inner.cmac(INTEGRITY_LABEL)?, b"pkcs11");
        Ok(Pkcs11Kek { config, inner, key_check, integrity })
    }

    /// Generate a new AES-256 key labelled as `config` says, inside the
    /// token: sensitive, never extractable, allowed to encrypt, decrypt and
    /// sign (CMAC). For provisioning; refuses a label already in use.
    pub fn generate_key(config: &Pkcs11Config) -> Result<()> {
        let ctx = context(&config.module_path)?;
        let slot = find_slot(&ctx, config)?;
        let kek_id = config.kek_id.as_str();
        let session = ctx.open_rw_session(slot).map_err(|e| classify(kek_id, "C_OpenSession", e))?;
        if let Some(pin) = &config.pin {
            match session.login(UserType::User, Some(pin)) {
                Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
                Err(e) => return Err(classify(kek_id, "C_Login", e)),
            }
        }
        let label = Attribute::Label(config.object_label.as_bytes().to_vec());
        let existing = session
            .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY), label.clone()])
            .map_err(|e| classify(kek_id, "C_FindObjects", e))?;
        if !existing.is_empty() {
            return Err(config_error(format!("a key labelled {:?} exists already", config.object_label)));
        }
        session
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::ValueLen(32.into()),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    Attribute::Sign(true),
                    label,
                ],
            )
            .map_err(|e| classify(kek_id, "C_GenerateKey", e))?;
        Ok(())
    }

    /// This KEK's key check value (hex; safe to display).
    pub fn key_check(&self) -> &str {
        &self.key_check
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &Pkcs11Config {
        &self.config
    }

    fn aad(keyring: &KeyringId, version: KeyVersion) -> Vec<u8> {
        keywheel_core::wrap_aad(WRAP_AAD_LABEL, keyring, version)
    }

    fn corrupt(&self, keyring: &KeyringId, version: KeyVersion) -> Error {
        Error::Kek {
            kek_id: self.config.kek_id.clone(),
            message: format!("wrapped key of {keyring} {version} is corrupt or belongs to another keyring/version"),
            retryable: false,
        }
    }

    async fn blocking<T: Send + 'static>(&self, op: impl FnOnce(&Inner) -> Result<T> + Send + 'static) -> Result<T> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || op(&inner))
            .await
            .map_err(|e| Error::KekUnavailable { kek_id: self.config.kek_id.clone(), message: format!("task: {e}") })?
    }
}

fn find_slot(ctx: &Pkcs11, config: &Pkcs11Config) -> Result<Slot> {
    let kek_id = config.kek_id.as_str();
    let slots = ctx.get_slots_with_token().map_err(|e| classify(kek_id, "C_GetSlotList", e))?;
    let mut skipped = None;
    for slot in slots {
        if config.slot_id.is_some_and(|id| id != slot.id()) {
            continue;
        }
        let Some(label) = &config.token_label else { return Ok(slot) };
        // A slot that cannot describe its token (removed meanwhile, failing)
        // is not the one named: look on.
        match ctx.get_token_info(slot) {
            Ok(info) if info.label().trim_end() == label => return Ok(slot),
            Ok(_) => {}
            Err(e) => skipped = Some(classify(kek_id, "C_GetTokenInfo", e).to_string()),
        }
    }
    Err(Error::KekUnavailable {
        kek_id: kek_id.to_owned(),
        message: format!(
            "no token labelled {:?}{} in module {}{}",
            config.token_label.as_deref().unwrap_or("(any)"),
            config.slot_id.map(|s| format!(" in slot {s}")).unwrap_or_default(),
            config.module_path.display(),
            skipped.map(|e| format!(" (a slot failed: {e})")).unwrap_or_default()
        ),
    })
}

#[async_trait]
impl KeyEncryptionKey for Pkcs11Kek {
    fn id(&self) -> &str {
        &self.config.kek_id
    }

    async fn wrap(&self, keyring: &KeyringId, version: KeyVersion, material: &KeyMaterial) -> Result<WrappedKey> {
        let iv: [u8; IV_LEN] = keywheel_core::random_nonce()?;
        let aad = Self::aad(keyring, version);
        let plain = Zeroizing::new(material.expose_secret().to_vec());
        let sealed = self
            .blocking(move |inner| {
                inner.with_session(|s, key| {
                    let mut iv = iv;
                    let params = GcmParams::new(&mut iv, &aad, (TAG_LEN as u64 * 8).into())
                        .map_err(|e| classify(&inner.kek_id, "GCM parameters", e))?;
                    s.encrypt(&Mechanism::AesGcm(params), key, &plain)
                        .map_err(|e| classify(&inner.kek_id, "C_Encrypt (AES-GCM)", e))
                })
            })
            .await?;
        let ciphertext = [&iv[..], &sealed].concat();
        Ok(WrappedKey { kek_id: self.config.kek_id.clone(), key_check: self.key_check.clone(), ciphertext })
    }

    async fn unwrap(&self, keyring: &KeyringId, version: KeyVersion, wrapped: &WrappedKey) -> Result<KeyMaterial> {
        if wrapped.kek_id != self.config.kek_id {
            return Err(Error::KekMismatch { expected: self.config.kek_id.clone(), found: wrapped.kek_id.clone() });
        }
        if wrapped.key_check.as_bytes() != self.key_check.as_bytes() {
            return Err(Error::wrong_master_key(&self.config.kek_id, &wrapped.key_check, &self.key_check));
        }
        if wrapped.ciphertext.len() != IV_LEN + KeyMaterial::LEN + TAG_LEN {
            return Err(self.corrupt(keyring, version));
        }
        let aad = Self::aad(keyring, version);
        let data = wrapped.ciphertext.clone();
        let opened = self
            .blocking(move |inner| {
                inner.with_session(|s, key| {
                    let (iv, sealed) = data.split_at(IV_LEN);
                    let mut iv = iv.to_vec();
                    let params = GcmParams::new(&mut iv, &aad, (TAG_LEN as u64 * 8).into())
                        .map_err(|e| classify(&inner.kek_id, "GCM parameters", e))?;
                    s.decrypt(&Mechanism::AesGcm(params), key, sealed).map(Zeroizing::new).map_err(|e| match e {
                        CkError::Pkcs11(
                            RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange | RvError::DataInvalid,
                            _,
                        ) => Error::Decrypt,
                        e => classify(&inner.kek_id, "C_Decrypt (AES-GCM)", e),
                    })
                })
            })
            .await
            .map_err(|e| if matches!(e, Error::Decrypt) { self.corrupt(keyring, version) } else { e })?;
        KeyMaterial::from_slice(&opened).map_err(|_| self.corrupt(keyring, version))
    }

    async fn integrity_key(&self) -> Result<IntegrityKey> {
        Ok(self.integrity.clone())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Close the session (cryptoki's Session does on drop); the context
        // stays initialised for other KEKs on the same module.
        if let Ok(mut guard) = self.session.lock() {
            guard.take();
        }
    }
}

/// The PIN in a [`Pkcs11Config`] (the unit tests check the parsing).
#[cfg(test)]
fn pin_of(config: &Pkcs11Config) -> Option<&str> {
    config.pin.as_ref().map(secrecy::ExposeSecret::expose_secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |var| pairs.iter().find(|(k, _)| *k == var).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn uris_parse_with_rfc_7512_attributes() {
        let c = Pkcs11Config::from_uri_with(
            "pkcs11:token=my%20token;object=kek;slot-id=3?module-path=/m.so&pin-source=env:P",
            env(&[("P", "1234")]),
        )
        .expect("parses");
        assert_eq!(c.token_label.as_deref(), Some("my token"));
        assert_eq!((c.object_label.as_str(), c.slot_id), ("kek", Some(3)));
        assert_eq!(c.module_path, PathBuf::from("/m.so"));
        assert_eq!(pin_of(&c), Some("1234"));
        assert!(!format!("{c:?}").contains("1234"), "no PIN in Debug");
        // Module and PIN from the environment.
        let c = Pkcs11Config::from_uri_with("pkcs11:token=t;object=k", env(&[(MODULE_ENV, "/e.so"), (PIN_ENV, "9")]))
            .expect("parses");
        assert_eq!((c.module_path.as_path(), pin_of(&c)), (Path::new("/e.so"), Some("9")));
    }

    #[test]
    fn bad_uris_are_refused_naming_the_attribute_never_the_pin() {
        for (uri, says) in [
            ("aws-kms://k", "starts with pkcs11:"),
            ("pkcs11:token=t?module-path=/m.so", "object="),
            ("pkcs11:object=k?module-path=/m.so", "token="),
            ("pkcs11:token=t;object=k;type=secret-key?module-path=/m.so", "\"type\""),
            ("pkcs11:token=t;object=k", MODULE_ENV),
            ("pkcs11:token=t;object=k?module-path=/m.so&pin-source=env:NOPE", "NOPE is not set"),
            ("pkcs11:token=t;object=k%zz?module-path=/m.so", "percent-encoding"),
            ("pkcs11:token=t;object=k?module-path=/m.so&pin-value=s3cret&colour=x", "\"colour\""),
        ] {
            let message = Pkcs11Config::from_uri_with(uri, env(&[])).expect_err(uri).to_string();
            assert!(message.contains(says) && !message.contains("s3cret"), "{uri}: {message}");
        }
    }
}
