//! Connection secrets, encrypted at rest with AES-256-GCM under the node's master key
//! (`HOLDFAST_MASTER_KEY`, else `<data>/master.key`, generated with mode 0600 on first use).
//! The journal and the state hold only ciphertext; the nonce is chosen before the change is
//! written, so applying the change stays deterministic.
//!
//! Version 2 (`"v": 2`) binds a secret to where it belongs: the project's id and the
//! connection's name are the AEAD's associated data, so a ciphertext copied into another project
//! (or onto another connection) does not open there. Version 1 (no `v`: no associated data) is
//! still read.
//!
//! Version 3 (`"v": 3`) seals under the project's own **data key** instead of the node's master
//! key, with the same associated data. The data key is random, kept in the project's record
//! wrapped for every region the project lives in ([`DataKeyRecord`]): for each region, an X25519
//! agreement between a fresh ephemeral key and the region's public key ([`RegionKey`], whose
//! secret half is derived from that region's own master key) gives, through HKDF-SHA-256, the
//! AES-256-GCM key that wraps it. So a project's secrets open in every region that holds it,
//! each with its own master key, and nowhere else; a region learns the others' public keys when
//! a project is replicated to it. Secrets of versions 1 and 2 are sealed again as version 3 when
//! their project is opened where they were sealed (`holdfast-agents`' `reseal_ops`).

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

/// Version 2: sealed under the master key with a binding (read; no longer written).
pub const SEALED_VERSION: u8 = 2;

/// Where a secret belongs: it opens only there.
#[derive(Clone, Copy, Debug)]
pub struct Binding<'a> {
    pub project: &'a str,
    pub connection: &'a str,
}

/// The version [`DataKey::seal`] writes.
pub const DATA_KEY_SEALED_VERSION: u8 = 3;

impl Binding<'_> {
    /// The associated data: the version byte, then the project id and the connection name,
    /// each followed by a NUL (neither may contain one).
    fn aad(&self, version: u8) -> Vec<u8> {
        let mut aad = vec![version];
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

    /// Seals `plaintext` for `binding` (version 2), as servers did before data keys: nothing
    /// writes it now; the tests make such secrets to show they are still read.
    #[cfg(test)]
    pub fn seal(&self, plaintext: &str, binding: Binding<'_>) -> Result<Sealed> {
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|e| Error::internal(format!("no randomness: {e}")))?;
        let aad = binding.aad(SEALED_VERSION);
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
                "the secret of connection {:?} cannot be decrypted here: it was sealed under another master key or for another project or connection",
                binding.connection
            ))
        };
        let nonce = B64.decode(&sealed.nonce).map_err(|_| bad())?;
        let ciphertext = B64.decode(&sealed.ciphertext).map_err(|_| bad())?;
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| bad())?;
        let aad = match sealed.v {
            1 => Vec::new(),
            SEALED_VERSION => binding.aad(SEALED_VERSION),
            DATA_KEY_SEALED_VERSION => {
                return Err(Error::internal(format!(
                    "the secret of connection {:?} is sealed under its project's data key, not the master key",
                    binding.connection
                )));
            }
            v => return Err(Error::internal(format!("a stored secret has version {v}, newer than this server reads"))),
        };
        let plain = self.cipher.decrypt(&Nonce::from(nonce), Payload { msg: &ciphertext, aad: &aad }).map_err(|_| bad())?;
        String::from_utf8(plain).map_err(|_| bad())
    }
}

/// A project's data key: what its secrets are sealed under (version 3).
#[derive(Clone)]
pub struct DataKey {
    cipher: Aes256Gcm,
    bytes: [u8; 32],
}

impl DataKey {
    /// A new random key.
    pub fn generate() -> Result<Self> {
        Ok(Self::from_bytes(random_bytes()?))
    }

    fn from_bytes(bytes: [u8; 32]) -> Self {
        Self { cipher: Aes256Gcm::new_from_slice(&bytes).expect("32-byte key"), bytes }
    }

    /// A key for one purpose, derived from the data key: HMAC-SHA-256(data key, `label`), as
    /// [`MasterKey::derive`] does from the master key.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.bytes).expect("HMAC takes a key of any length");
        mac.update(label.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Seals `plaintext` for `binding` (version 3).
    pub fn seal(&self, plaintext: &str, binding: Binding<'_>) -> Result<Sealed> {
        let nonce: [u8; 12] = random_bytes::<12>()?;
        let aad = binding.aad(DATA_KEY_SEALED_VERSION);
        let ciphertext = self
            .cipher
            .encrypt(&Nonce::from(nonce), Payload { msg: plaintext.as_bytes(), aad: &aad })
            .map_err(|_| Error::internal("encryption failed"))?;
        Ok(Sealed {
            alg: "aes-256-gcm".into(),
            v: DATA_KEY_SEALED_VERSION,
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(ciphertext),
        })
    }

    /// Opens a version-3 secret sealed for `binding`.
    pub fn open(&self, sealed: &Sealed, binding: Binding<'_>) -> Result<String> {
        let bad = || {
            Error::internal(format!(
                "the secret of connection {:?} cannot be decrypted with its project's data key: it was sealed for \
                 another project or connection",
                binding.connection
            ))
        };
        if sealed.v != DATA_KEY_SEALED_VERSION {
            return Err(Error::internal(format!("a secret of version {} is not sealed under a data key", sealed.v)));
        }
        let nonce: [u8; 12] = B64.decode(&sealed.nonce).ok().and_then(|n| n.try_into().ok()).ok_or_else(bad)?;
        let ciphertext = B64.decode(&sealed.ciphertext).map_err(|_| bad())?;
        let aad = binding.aad(DATA_KEY_SEALED_VERSION);
        let plain = self.cipher.decrypt(&Nonce::from(nonce), Payload { msg: &ciphertext, aad: &aad }).map_err(|_| bad())?;
        String::from_utf8(plain).map_err(|_| bad())
    }
}

/// Where a project's data key is kept, in the project's record: the public key of every region
/// the project lives in, and the data key wrapped for each of them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataKeyRecord {
    /// Region → its public key (base64 of 32 bytes).
    #[serde(default)]
    pub keys: std::collections::BTreeMap<String, String>,
    /// Region → the data key wrapped for it; empty until the project's first secret.
    #[serde(default)]
    pub wraps: std::collections::BTreeMap<String, Wrapped>,
}

/// A data key wrapped for one region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wrapped {
    /// `x25519-hkdf-sha256-aes-256-gcm`
    pub alg: String,
    /// The public key it was wrapped for (base64), so a region whose key changed is wrapped anew.
    pub to: String,
    /// The ephemeral public key (base64).
    pub epk: String,
    pub nonce: String,
    pub ciphertext: String,
}

const WRAP_ALG: &str = "x25519-hkdf-sha256-aes-256-gcm";
const WRAP_INFO: &[u8] = b"holdfast/data-key-wrap/v1";

/// This region's key pair for project data keys; the secret half is derived from the master key.
pub struct RegionKey {
    secret: x25519_dalek::StaticSecret,
    public: String,
}

impl RegionKey {
    pub fn of(master: &MasterKey) -> Self {
        let secret = x25519_dalek::StaticSecret::from(master.derive("holdfast/region-key/v1"));
        let public = B64.encode(x25519_dalek::PublicKey::from(&secret).as_bytes());
        Self { secret, public }
    }

    /// The public half, as regions exchange it (base64).
    pub fn public(&self) -> &str {
        &self.public
    }

    /// Opens a data key wrapped for `region` (this one).
    pub fn unwrap_key(&self, wrapped: &Wrapped, region: &str) -> Result<DataKey> {
        let bad = |why: &str| {
            Error::internal(format!(
                "this region ({region}) cannot open the project's data key: {why}; its secrets were wrapped for \
                 another key (run `holdfast project replicate` from the primary again to wrap them for this region)"
            ))
        };
        if wrapped.alg != WRAP_ALG || wrapped.to != self.public {
            return Err(bad("it was wrapped for another region key"));
        }
        let epk = decode32(&wrapped.epk).ok_or_else(|| bad("a malformed ephemeral key"))?;
        let shared = self.secret.diffie_hellman(&x25519_dalek::PublicKey::from(epk));
        if !shared.was_contributory() {
            return Err(bad("its ephemeral key is a low-order point"));
        }
        let cipher = wrap_cipher(shared.as_bytes(), &epk, &decode32(&self.public).unwrap_or_default());
        let nonce: [u8; 12] = B64.decode(&wrapped.nonce).ok().and_then(|n| n.try_into().ok()).ok_or_else(|| bad("a malformed nonce"))?;
        let ciphertext = B64.decode(&wrapped.ciphertext).map_err(|_| bad("malformed"))?;
        let plain = cipher
            .decrypt(&Nonce::from(nonce), Payload { msg: &ciphertext, aad: region.as_bytes() })
            .map_err(|_| bad("it does not open with this region's key"))?;
        let bytes: [u8; 32] = plain.try_into().map_err(|_| bad("not 32 bytes"))?;
        Ok(DataKey::from_bytes(bytes))
    }
}

/// Wraps `key` for `region`, whose public key is `to` (base64).
pub fn wrap_key(key: &DataKey, to: &str, region: &str) -> Result<Wrapped> {
    let recipient = decode32(to).ok_or_else(|| Error::invalid(format!("region {region}'s key is not 32 bytes of base64")))?;
    let ephemeral = x25519_dalek::StaticSecret::from(random_bytes::<32>()?);
    let epk = *x25519_dalek::PublicKey::from(&ephemeral).as_bytes();
    let shared = ephemeral.diffie_hellman(&x25519_dalek::PublicKey::from(recipient));
    // A low-order "public key" would make the shared secret public: refused.
    if !shared.was_contributory() {
        return Err(Error::invalid(format!("region {region}'s key is not a usable X25519 public key")));
    }
    let cipher = wrap_cipher(shared.as_bytes(), &epk, &recipient);
    let nonce: [u8; 12] = random_bytes::<12>()?;
    let ciphertext = cipher
        .encrypt(&Nonce::from(nonce), Payload { msg: &key.bytes, aad: region.as_bytes() })
        .map_err(|_| Error::internal("wrapping failed"))?;
    Ok(Wrapped {
        alg: WRAP_ALG.into(),
        to: to.to_owned(),
        epk: B64.encode(epk),
        nonce: B64.encode(nonce),
        ciphertext: B64.encode(ciphertext),
    })
}

/// The wrapping cipher: HKDF-SHA-256 over the agreement, salted with both public keys.
fn wrap_cipher(shared: &[u8; 32], epk: &[u8; 32], recipient: &[u8; 32]) -> Aes256Gcm {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(epk);
    salt[32..].copy_from_slice(recipient);
    let mut okm = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(Some(&salt), shared).expand(WRAP_INFO, &mut okm).expect("32 bytes is a valid length");
    Aes256Gcm::new_from_slice(&okm).expect("32-byte key")
}

fn decode32(text: &str) -> Option<[u8; 32]> {
    B64.decode(text).ok()?.try_into().ok()
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| Error::internal(format!("no randomness: {e}")))?;
    Ok(bytes)
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

    #[test]
    fn a_data_key_wrapped_for_a_region_opens_there_only() {
        let (east, west) = (MasterKey::load(Some(&"01".repeat(32)), Path::new("/x")).expect("key"), MasterKey::load(Some(&"02".repeat(32)), Path::new("/x")).expect("key"));
        let (east, west) = (RegionKey::of(&east), RegionKey::of(&west));
        assert_ne!(east.public(), west.public());
        let key = DataKey::generate().expect("data key");
        let here = Binding { project: "prj_a", connection: "upstream" };
        let sealed = key.seal("sk-secret", here).expect("seal");
        assert_eq!(sealed.v, DATA_KEY_SEALED_VERSION);
        let for_west = wrap_key(&key, west.public(), "westus").expect("wrap");
        let opened = west.unwrap_key(&for_west, "westus").expect("unwrap in westus");
        assert_eq!(opened.open(&sealed, here).expect("open"), "sk-secret");
        // Not with another region's key (even when the wrap claims to be for it), nor under
        // another region's name.
        assert!(east.unwrap_key(&for_west, "westus").is_err());
        let Err(e) = east.unwrap_key(&Wrapped { to: east.public().to_owned(), ..for_west.clone() }, "westus") else {
            panic!("east's secret key opened a wrap made for west");
        };
        assert!(e.message.contains("does not open"), "{}", e.message);
        // A low-order point is no key.
        assert!(wrap_key(&key, &B64.encode([0u8; 32]), "evil").is_err());
        assert!(west.unwrap_key(&Wrapped { to: west.public().to_owned(), ..for_west.clone() }, "eastus").is_err());
        // A tampered wrap does not open.
        let mut bent = for_west.clone();
        bent.ciphertext = B64.encode(vec![0u8; 48]);
        assert!(west.unwrap_key(&bent, "westus").is_err());
        // The binding still holds under a data key.
        assert!(opened.open(&sealed, Binding { project: "prj_b", connection: "upstream" }).is_err());
        // The master key does not open a version-3 secret, and says why.
        let e = MasterKey::load(Some(&"01".repeat(32)), Path::new("/x")).expect("key").open(&sealed, here).expect_err("v3");
        assert!(e.message.contains("data key"), "{}", e.message);
    }

    fn legacy_seal(key: &MasterKey, plaintext: &str) -> Sealed {
        let nonce = [7u8; 12];
        let ciphertext = key.cipher.encrypt(&Nonce::from(nonce), plaintext.as_bytes()).expect("encrypt");
        Sealed { alg: "aes-256-gcm".into(), v: 1, nonce: B64.encode(nonce), ciphertext: B64.encode(ciphertext) }
    }
}
