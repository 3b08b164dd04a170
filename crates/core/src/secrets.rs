//! Connection secrets, encrypted at rest with AES-256-GCM under the node's master key
//! (`HOLDFAST_MASTER_KEY`, else `<data>/master.key`, generated with mode 0600 on first use).
//! The journal and the state hold only ciphertext; the nonce is chosen before the change is
//! written, so applying the change stays deterministic.
//!
//! Version 2 (`"v": 2`) binds a secret to where it belongs: the project's id and the
//! connection's name are the AEAD's associated data, so a ciphertext copied into another project
//! (or onto another connection) does not open there. Version 1 (no `v`: no associated data) is
//! still read, and a project's version-1 secrets are sealed again as version 2 when the project
//! is opened ([`reseal_ops`](super::connections::reseal_ops)).

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
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
    /// 1: no associated data; 2: bound to its [`Binding`].
    #[serde(default = "v1", skip_serializing_if = "is_v1")]
    pub v: u8,
    pub nonce: String,
    pub ciphertext: String,
}

fn v1() -> u8 {
    1
}

fn is_v1(v: &u8) -> bool {
    *v == 1
}

/// The version [`MasterKey::seal`] writes.
pub const SEALED_VERSION: u8 = 2;

/// Where a secret belongs: it opens only there.
#[derive(Clone, Copy, Debug)]
pub struct Binding<'a> {
    pub project: &'a str,
    pub connection: &'a str,
}

impl Binding<'_> {
    /// The associated data: the version byte, then the project id and the connection name,
    /// each followed by a NUL (neither may contain one).
    fn aad(&self) -> Vec<u8> {
        let mut aad = vec![SEALED_VERSION];
        for part in [self.project, self.connection] {
            aad.extend_from_slice(part.as_bytes());
            aad.push(0);
        }
        aad
    }
}

#[derive(Clone)]
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

    /// Seals `plaintext` for `binding` (version 2).
    pub fn seal(&self, plaintext: &str, binding: Binding<'_>) -> Result<Sealed> {
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|e| Error::internal(format!("no randomness: {e}")))?;
        let aad = binding.aad();
        let ciphertext = self
            .cipher
            .encrypt(&Nonce::from(nonce), Payload { msg: plaintext.as_bytes(), aad: &aad })
            .map_err(|_| Error::internal("encryption failed"))?;
        Ok(Sealed { alg: "aes-256-gcm".into(), v: SEALED_VERSION, nonce: B64.encode(nonce), ciphertext: B64.encode(ciphertext) })
    }

    /// Opens a secret sealed for `binding` (or a version-1 one, which has none).
    pub fn open(&self, sealed: &Sealed, binding: Binding<'_>) -> Result<String> {
        let bad = || {
            Error::internal(format!(
                "the secret of connection {:?} cannot be decrypted here: it was sealed under another master key or for                  another project or connection",
                binding.connection
            ))
        };
        let nonce = B64.decode(&sealed.nonce).map_err(|_| bad())?;
        let ciphertext = B64.decode(&sealed.ciphertext).map_err(|_| bad())?;
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| bad())?;
        let aad = match sealed.v {
            1 => Vec::new(),
            SEALED_VERSION => binding.aad(),
            v => return Err(Error::internal(format!("a stored secret has version {v}, newer than this server reads"))),
        };
        let plain = self.cipher.decrypt(&Nonce::from(nonce), Payload { msg: &ciphertext, aad: &aad }).map_err(|_| bad())?;
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
        let here = Binding { project: "prj_a", connection: "upstream" };
        let sealed = key.seal("sk-secret", here).expect("seal");
        assert!(!sealed.ciphertext.contains("sk-secret"));
        assert_eq!(sealed.v, SEALED_VERSION);
        assert_eq!(key.open(&sealed, here).expect("open"), "sk-secret");
        let again = MasterKey::load(None, &dir.path().join("master.key")).expect("reload");
        assert_eq!(again.open(&sealed, here).expect("open with reloaded key"), "sk-secret");
        let other = MasterKey::load(Some(&"ab".repeat(32)), &dir.path().join("unused")).expect("env key");
        assert!(other.open(&sealed, here).is_err());
        assert!(MasterKey::load(Some("short"), &dir.path().join("unused")).is_err());
    }

    #[test]
    fn a_secret_opens_only_where_it_was_sealed() {
        let key = MasterKey::load(Some(&"cd".repeat(32)), Path::new("/nonexistent")).expect("env key");
        let sealed = key.seal("sk-secret", Binding { project: "prj_a", connection: "upstream" }).expect("seal");
        for elsewhere in [Binding { project: "prj_b", connection: "upstream" }, Binding { project: "prj_a", connection: "other" }] {
            let e = key.open(&sealed, elsewhere).expect_err("moved secret");
            assert!(e.message.contains("another project or connection"), "{}", e.message);
        }
        // A version-1 secret (no associated data) still opens, wherever it is.
        let legacy = Sealed { v: 1, ..legacy_seal(&key, "sk-old") };
        assert_eq!(key.open(&legacy, Binding { project: "prj_b", connection: "x" }).expect("v1"), "sk-old");
        let json = serde_json::to_value(&legacy).expect("json");
        assert!(json.get("v").is_none(), "version 1 is written as before: {json}");
        assert_eq!(serde_json::from_value::<Sealed>(json).expect("parse").v, 1);
    }

    fn legacy_seal(key: &MasterKey, plaintext: &str) -> Sealed {
        let nonce = [7u8; 12];
        let ciphertext = key.cipher.encrypt(&Nonce::from(nonce), plaintext.as_bytes()).expect("encrypt");
        Sealed { alg: "aes-256-gcm".into(), v: 1, nonce: B64.encode(nonce), ciphertext: B64.encode(ciphertext) }
    }
}
