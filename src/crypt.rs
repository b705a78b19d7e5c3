//! Customer-supplied keys and the record sealing of encrypted extent-list
//! streams (`docs/extent-list.md`, *Encryption*).
//!
//! A [`CustomerKey`] is a 256-bit AES key. It is identified in headers,
//! snapshot metadata and Operations by the SHA-256 of its bytes, never by
//! the bytes themselves. [`Sealer`] seals and opens the pieces of one
//! stream with AES-256-GCM: a random 8-byte nonce prefix per stream plus a
//! 4-byte record index make every nonce unique, so records can be neither
//! reordered nor moved between streams.
//!
//! Known shortcoming: the key bytes are not wiped from memory when a
//! [`CustomerKey`] is dropped.

use crate::error::{Error, Result};
use aes_gcm::aead::{AeadInOut, Generate, KeyInit};
use aes_gcm::aead::{Nonce, Tag};
use aes_gcm::Aes256Gcm;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;

/// Length of an authentication tag, appended to every sealed piece.
pub const TAG_LEN: usize = 16;

/// A customer-supplied 256-bit key.
#[derive(Clone, PartialEq, Eq)]
pub struct CustomerKey([u8; 32]);

impl fmt::Debug for CustomerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CustomerKey(sha256 {})", self.sha256_base64())
    }
}

impl CustomerKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        CustomerKey(bytes)
    }

    /// A key from its base64 text (RFC 4648, standard alphabet, padded),
    /// as the API's `rawKey` carries it. Surrounding white space is
    /// ignored. `field` names the argument in the error.
    pub fn from_base64(text: &str, field: &'static str) -> Result<Self> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| Error::invalid(field, format!("the key is not base64: {e}")))?;
        let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            Error::invalid(
                field,
                format!(
                    "the key is {} bytes; an AES-256 key is 32 bytes (44 base64 characters)",
                    bytes.len()
                ),
            )
        })?;
        Ok(CustomerKey(bytes))
    }

    /// Reads a key file: the key's base64 text, as in `rawKey`.
    pub fn from_file(path: &Path) -> Result<Self> {
        use std::io::Read;
        // Read at most one byte more than a key file can hold: a device or
        // a FIFO reports no length and may never end.
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(4097).read_to_string(&mut text))
            .map_err(|e| Error::io(path, e))?;
        if text.len() > 4096 {
            return Err(Error::invalid(
                "key-file",
                format!("{} is too long for a key file", path.display()),
            ));
        }
        Self::from_base64(&text, "key-file")
    }

    /// The SHA-256 of the key's bytes.
    pub fn sha256(&self) -> [u8; 32] {
        Sha256::digest(self.0).into()
    }

    /// The SHA-256 of the key's bytes in base64, as the API reports it.
    pub fn sha256_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.sha256())
    }

    pub(crate) fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&self.0.into())
    }
}

/// Refuses a key given for an export that is not encrypted: whoever
/// hands over a key expects the export to be authenticated with it, and a
/// plaintext export could otherwise stand in for an encrypted one.
pub fn refuse_unused_key(key: Option<&CustomerKey>, what: &str) -> crate::Result<()> {
    match key {
        Some(key) => Err(crate::Error::Mismatch(format!(
            "a key (sha256 {}) was given, but {what} is not encrypted; \
             leave the key out to read it as it is",
            key.sha256_base64()
        ))),
        None => Ok(()),
    }
}

/// A SHA-256 in the API's base64 form.
pub fn sha256_base64(digest: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// A service's way to turn the API's wrapped keys into a [`CustomerKey`]:
/// `rsaEncryptedKey` (a key wrapped with the service's RSA public key) and
/// `kmsKeyName` (a key held by a key service). snapdelta itself holds no
/// private key and reaches no key service; the command line has no
/// unwrapper and refuses both kinds of key.
pub trait KeyUnwrapper {
    /// Unwraps the decoded bytes of `rsaEncryptedKey`. The error message
    /// is reported at `exportParams.encryptionKey.rsaEncryptedKey`.
    fn unwrap_rsa(&self, wrapped: &[u8]) -> std::result::Result<CustomerKey, String>;

    /// Fetches the key named `kmsKeyName`, as `service_account` when the
    /// request gives `kmsKeyServiceAccount`. The error message is
    /// reported at `exportParams.encryptionKey.kmsKeyName`.
    fn unwrap_kms(
        &self,
        name: &str,
        service_account: Option<&str>,
    ) -> std::result::Result<CustomerKey, String>;
}

/// Seals or opens the pieces of one encrypted stream.
pub(crate) struct Sealer {
    cipher: Aes256Gcm,
    prefix: [u8; 8],
}

impl Sealer {
    pub(crate) fn new(key: &CustomerKey, prefix: [u8; 8]) -> Self {
        Sealer {
            cipher: key.cipher(),
            prefix,
        }
    }

    /// A fresh random nonce prefix.
    pub(crate) fn random_prefix() -> Result<[u8; 8]> {
        <[u8; 8]>::try_generate().map_err(|e| {
            Error::io(
                "random source",
                std::io::Error::other(format!("no random bytes for the nonce: {e}")),
            )
        })
    }

    fn nonce(&self, index: u64) -> Result<Nonce<Aes256Gcm>> {
        let index = u32::try_from(index).map_err(|_| {
            Error::Unsupported("an encrypted stream holds fewer than 2^32 records".into())
        })?;
        let mut n = [0u8; 12];
        n[..8].copy_from_slice(&self.prefix);
        n[8..].copy_from_slice(&index.to_be_bytes());
        Ok(n.into())
    }

    /// Encrypts `buf` in place; returns its tag.
    pub(crate) fn seal(&self, index: u64, aad: &[&[u8]], buf: &mut [u8]) -> Result<[u8; TAG_LEN]> {
        let nonce = self.nonce(index)?;
        let aad = aad.concat();
        let tag = self
            .cipher
            .encrypt_inout_detached(&nonce, &aad, buf.into())
            .map_err(|_| Error::Unsupported("a record too long to encrypt".into()))?;
        Ok(tag.into())
    }

    /// Decrypts `buf` in place if `tag` authenticates it; false otherwise.
    pub(crate) fn open(
        &self,
        index: u64,
        aad: &[&[u8]],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<bool> {
        let nonce = self.nonce(index)?;
        let aad = aad.concat();
        let tag: Tag<Aes256Gcm> = (*tag).into();
        Ok(self
            .cipher
            .decrypt_inout_detached(&nonce, &aad, buf.into(), &tag)
            .is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_identify() {
        let text = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let key = CustomerKey::from_base64(&text, "k").unwrap();
        assert_eq!(key.sha256(), <[u8; 32]>::from(Sha256::digest([7u8; 32])));
        assert!(!format!("{key:?}").contains(&text));
        assert!(CustomerKey::from_base64("AAAA", "k").is_err());
        assert!(CustomerKey::from_base64("not base64!", "k").is_err());
    }

    #[test]
    fn sealed_pieces_open_only_where_they_were_sealed() {
        let key = CustomerKey::from_bytes([1; 32]);
        let s = Sealer::new(&key, [2; 8]);
        let mut buf = b"secret bytes".to_vec();
        let tag = s.seal(3, &[b"hdr"], &mut buf).unwrap();
        assert_ne!(buf, b"secret bytes");
        let mut copy = buf.clone();
        assert!(!s.open(4, &[b"hdr"], &mut copy, &tag).unwrap());
        let mut copy = buf.clone();
        assert!(!s.open(3, &[b"hdx"], &mut copy, &tag).unwrap());
        let other = Sealer::new(&CustomerKey::from_bytes([9; 32]), [2; 8]);
        let mut copy = buf.clone();
        assert!(!other.open(3, &[b"hdr"], &mut copy, &tag).unwrap());
        assert!(s.open(3, &[b"hdr"], &mut buf, &tag).unwrap());
        assert_eq!(buf, b"secret bytes");
    }
}
