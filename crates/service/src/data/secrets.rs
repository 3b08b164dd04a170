//! Connection secrets, encrypted at rest with AES-256-GCM under the node's master key
//! (`HOLDFAST_MASTER_KEY`, else `<data>/master.key`, generated with mode 0600 on first use).
//! The journal and the state hold only ciphertext; the nonce is chosen before the change is
//! written, so applying the change stays deterministic.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use holdfast_types::Error;
use serde::{Deserialize, Serialize};

use crate::Result;

/// A sealed secret as stored in a resource body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// `aes-256-gcm`
    pub alg: String,
    pub nonce: String,
    pub ciphertext: String,
}

pub struct MasterKey {
    cipher: Aes256Gcm,
    /// The key itself, for deriving the node's other keys ([`MasterKey::derive`]).
    bytes: [u8; 32],
}

impl MasterKey {
    /// Loads the key from `env` (64 hex digits or base64 of 32 bytes) or from `file`, creating
    /// the file if neither exists.
    pub fn load(env: Option<&str>, file: &Path) -> Result<Self> {
        let bytes = match env {
            Some(text) => decode_key(text.trim()).ok_or_else(|| {
                Error::invalid("HOLDFAST_MASTER_KEY must be 32 bytes as 64 hex digits or base64")
            })?,
            None => match std::fs::read_to_string(file) {
                Ok(text) => decode_key(text.trim())
                    .ok_or_else(|| Error::internal(format!("{} does not hold a 32-byte key", file.display())))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key_file(file)?,
                Err(e) => return Err(Error::internal(format!("cannot read {}: {e}", file.display()))),
            },
        };
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| Error::internal("master key must be 32 bytes"))?;
        let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| Error::internal("master key must be 32 bytes"))?;
        Ok(Self { cipher, bytes })
    }

    /// A key for one purpose, derived from the master key: HMAC-SHA-256(master, `label`). Keys
    /// of different labels are independent; each label names its purpose and version (such as
    /// `holdfast/audit-chain/v1`), so a purpose can move to a new key by taking a new label.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.bytes).expect("HMAC takes a key of any length");
        mac.update(label.as_bytes());
        mac.finalize().into_bytes().into()
    }

    pub fn seal(&self, plaintext: &str) -> Result<Sealed> {
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|e| Error::internal(format!("no randomness: {e}")))?;
        let ciphertext = self
            .cipher
            .encrypt(&Nonce::from(nonce), plaintext.as_bytes())
            .map_err(|_| Error::internal("encryption failed"))?;
        Ok(Sealed { alg: "aes-256-gcm".into(), nonce: B64.encode(nonce), ciphertext: B64.encode(ciphertext) })
    }

    pub fn open(&self, sealed: &Sealed) -> Result<String> {
        let bad = || Error::internal("a stored secret cannot be decrypted with this node's master key");
        let nonce = B64.decode(&sealed.nonce).map_err(|_| bad())?;
        let ciphertext = B64.decode(&sealed.ciphertext).map_err(|_| bad())?;
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| bad())?;
        let plain = self.cipher.decrypt(&Nonce::from(nonce), ciphertext.as_ref()).map_err(|_| bad())?;
        String::from_utf8(plain).map_err(|_| bad())
    }
}

fn decode_key(text: &str) -> Option<Vec<u8>> {
    let bytes = if text.len() == 64 { hex::decode(text).ok()? } else { B64.decode(text).ok()? };
    (bytes.len() == 32).then_some(bytes)
}

fn create_key_file(file: &Path) -> Result<Vec<u8>> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| Error::internal(format!("no randomness: {e}")))?;
    crate::write_secret_file(file, &format!("{}\n", hex::encode(key)))?;
    Ok(key.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_wrong_key_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = MasterKey::load(None, &dir.path().join("master.key")).expect("create");
        let sealed = key.seal("sk-secret").expect("seal");
        assert!(!sealed.ciphertext.contains("sk-secret"));
        assert_eq!(key.open(&sealed).expect("open"), "sk-secret");
        let again = MasterKey::load(None, &dir.path().join("master.key")).expect("reload");
        assert_eq!(again.open(&sealed).expect("open with reloaded key"), "sk-secret");
        let other = MasterKey::load(Some(&"ab".repeat(32)), &dir.path().join("unused")).expect("env key");
        assert!(other.open(&sealed).is_err());
        assert!(MasterKey::load(Some("short"), &dir.path().join("unused")).is_err());
    }
}
