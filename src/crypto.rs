//! Keys and sealing: Argon2id master key, HKDF subkeys, AES-256-PMAC-SIV for
//! objects, names and metadata values.
//!
//! Architecture invariant: pure and synchronous. No IO, no logging of secrets,
//! no `Debug` on key material. The byte formats produced here are frozen in
//! `docs/FORMAT.md`; changing them needs a new version byte.

use aes_siv::aead::KeyInit;
use aes_siv::siv::Aes256PmacSiv;
use argon2::{Algorithm, Argon2, Params, Version};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Errors from key derivation and sealing.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("key derivation parameters out of range: {0}")]
    BadKdfParams(String),
    #[error("authentication failed (wrong key or corrupted data)")]
    Auth,
    #[error("malformed sealed data: {0}")]
    Malformed(&'static str),
}

/// Argon2id cost parameters, stored in the clear next to the vault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfParams {
    /// Floor: the minimum (64 MiB, t=3).
    pub const MIN_M_KIB: u32 = 64 * 1024;
    pub const MIN_T: u32 = 3;
    /// Ceiling: a forged config must not stall a mount for minutes.
    pub const MAX_M_KIB: u32 = 4 * 1024 * 1024;
    pub const MAX_T: u32 = 16;
    pub const MAX_P: u32 = 16;

    /// Default: 256 MiB, t=3, p=2 (about a third of a second on the reference machine).
    pub fn default_strong() -> Self {
        KdfParams {
            m_kib: 256 * 1024,
            t: 3,
            p: 2,
        }
    }

    pub fn validate(&self) -> Result<(), CryptoError> {
        if self.m_kib < Self::MIN_M_KIB || self.m_kib > Self::MAX_M_KIB {
            return Err(CryptoError::BadKdfParams(format!(
                "memory {} KiB not within {}..={} KiB",
                self.m_kib,
                Self::MIN_M_KIB,
                Self::MAX_M_KIB
            )));
        }
        if self.t < Self::MIN_T || self.t > Self::MAX_T {
            return Err(CryptoError::BadKdfParams(format!(
                "passes {} not within {}..={}",
                self.t,
                Self::MIN_T,
                Self::MAX_T
            )));
        }
        if self.p == 0 || self.p > Self::MAX_P {
            return Err(CryptoError::BadKdfParams(format!(
                "lanes {} not within 1..={}",
                self.p,
                Self::MAX_P
            )));
        }
        Ok(())
    }
}

/// Salt for a vault: derived from its name so the same name and password give
/// the same key on any machine.
pub fn vault_salt(vault_name: &str) -> [u8; 16] {
    let h = blake3::derive_key("drizzle 2026 vault salt v1", vault_name.as_bytes());
    let mut salt = [0u8; 16];
    salt.copy_from_slice(&h[..16]);
    salt
}

/// The vault's derived keys. No `Debug`, no `Clone`; zeroized on drop.
pub struct VaultKeys {
    object: Zeroizing<[u8; 64]>,
    name: Zeroizing<[u8; 64]>,
    meta: Zeroizing<[u8; 64]>,
    check: Zeroizing<[u8; 32]>,
    lease: Zeroizing<[u8; 32]>,
    root: Zeroizing<[u8; 32]>,
}

impl VaultKeys {
    /// Runs Argon2id on the password and derives every subkey.
    pub fn derive(
        password: &[u8],
        vault_name: &str,
        params: KdfParams,
    ) -> Result<Self, CryptoError> {
        params.validate()?;
        let a2params = Params::new(params.m_kib, params.t, params.p, Some(32))
            .map_err(|e| CryptoError::BadKdfParams(e.to_string()))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, a2params);
        let mut master = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(password, &vault_salt(vault_name), master.as_mut())
            .map_err(|e| CryptoError::BadKdfParams(e.to_string()))?;
        Ok(Self::from_master(&master))
    }

    /// Derives the subkeys from a master key (HKDF-SHA256, one label each).
    pub fn from_master(master: &[u8; 32]) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(b"drizzle hkdf v1"), master);
        let mut object = Zeroizing::new([0u8; 64]);
        let mut name = Zeroizing::new([0u8; 64]);
        let mut meta = Zeroizing::new([0u8; 64]);
        let mut check = Zeroizing::new([0u8; 32]);
        let mut lease = Zeroizing::new([0u8; 32]);
        let mut root = Zeroizing::new([0u8; 32]);
        // Output lengths are fixed and far below HKDF's limit: expand cannot fail.
        hk.expand(b"drizzle object seal", object.as_mut())
            .expect("hkdf length");
        hk.expand(b"drizzle name seal", name.as_mut())
            .expect("hkdf length");
        hk.expand(b"drizzle metadata seal", meta.as_mut())
            .expect("hkdf length");
        hk.expand(b"drizzle key check", check.as_mut())
            .expect("hkdf length");
        hk.expand(b"drizzle lease secrets", lease.as_mut())
            .expect("hkdf length");
        hk.expand(b"drizzle root signing", root.as_mut())
            .expect("hkdf length");
        VaultKeys {
            object,
            name,
            meta,
            check,
            lease,
            root,
        }
    }

    /// The Ed25519 key that signs the vault's root record (zeroized on drop).
    pub fn root_signer(&self) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&self.root)
    }

    /// The root record's public key (what its DHT key is derived from).
    pub fn root_public(&self) -> [u8; 32] {
        self.root_signer().verifying_key().to_bytes()
    }

    /// The renew and cancel secrets of one fragment's lease on one peer:
    /// keyed hashes of (fragment id, peer id), so nothing links two
    /// fragments of one vault. Peers see only BLAKE3 of each secret until
    /// the owner renews or cancels.
    pub fn lease_secrets(&self, fragment: &[u8; 32], peer: &[u8]) -> ([u8; 32], [u8; 32]) {
        let secret = |kind: &[u8]| {
            let mut h = blake3::Hasher::new_keyed(&self.lease);
            h.update(kind);
            h.update(fragment);
            h.update(peer);
            *h.finalize().as_bytes()
        };
        (secret(b"renew"), secret(b"cancel"))
    }

    /// A value stored in the vault config that tells a wrong password at once.
    pub fn key_check(&self) -> String {
        let h = blake3::keyed_hash(&self.check, b"drizzle key check v1");
        h.to_hex().to_string()
    }

    fn siv(key: &[u8; 64]) -> Aes256PmacSiv {
        Aes256PmacSiv::new_from_slice(key).expect("64-byte key")
    }

    /// Seals a chunk of file content into an object (see FORMAT.md, "Object").
    pub fn seal_object(&self, plaintext: &[u8]) -> Vec<u8> {
        let framed_len = 4 + plaintext.len();
        // Full chunks have a known size anyway: never pad past the largest frame.
        let padded = padded_len(framed_len).min(framed_len.max(crate::chunk::CHUNK_SIZE + 4));
        let mut out = Vec::with_capacity(OBJECT_OVERHEAD + padded);
        out.extend_from_slice(&OBJECT_HEADER);
        out.extend_from_slice(&[0u8; TAG_LEN]);
        out.extend_from_slice(&(plaintext.len() as u32).to_le_bytes());
        out.extend_from_slice(plaintext);
        out.resize(OBJECT_HEADER.len() + TAG_LEN + padded, 0);
        let (head, body) = out.split_at_mut(OBJECT_HEADER.len() + TAG_LEN);
        let tag = Self::siv(&self.object)
            .encrypt_inout_detached([&OBJECT_HEADER[..]], body.into())
            .expect("SIV over bounded input");
        head[OBJECT_HEADER.len()..].copy_from_slice(&tag);
        out
    }

    /// Opens an object sealed by [`seal_object`](Self::seal_object),
    /// decrypting in place in the buffer it is given.
    pub fn open_object(&self, mut sealed: Vec<u8>) -> Result<Vec<u8>, CryptoError> {
        let hl = OBJECT_HEADER.len();
        if sealed.len() < hl + TAG_LEN + 4 {
            return Err(CryptoError::Malformed("object too short"));
        }
        if sealed[..4] != OBJECT_HEADER[..4] {
            return Err(CryptoError::Malformed("bad object magic"));
        }
        if sealed[4] != OBJECT_HEADER[4] || sealed[5] != OBJECT_HEADER[5] {
            return Err(CryptoError::Malformed("unknown object format version"));
        }
        let tag = aes_siv::Tag::try_from(&sealed[hl..hl + TAG_LEN])
            .map_err(|_| CryptoError::Malformed("tag"))?;
        let (head, body) = sealed.split_at_mut(hl + TAG_LEN);
        Self::siv(&self.object)
            .decrypt_inout_detached([&head[..hl]], body.into(), &tag)
            .map_err(|_| CryptoError::Auth)?;
        let len = u32::from_le_bytes(body[..4].try_into().expect("4 bytes")) as usize;
        if 4 + len > body.len() {
            return Err(CryptoError::Malformed("object length field"));
        }
        let start = hl + TAG_LEN + 4;
        sealed.copy_within(start..start + len, 0);
        sealed.truncate(len);
        Ok(sealed)
    }

    /// Seals a file name under its parent directory (deterministic, so a
    /// lookup can seal the name and search for it). Padded to 32 bytes.
    pub fn seal_name(&self, parent: u64, name: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if name.is_empty() || name.len() > 255 {
            return Err(CryptoError::Malformed("name length"));
        }
        let padded = (1 + name.len()).div_ceil(32) * 32;
        let mut buf = Vec::with_capacity(TAG_LEN + padded);
        buf.extend_from_slice(&[0u8; TAG_LEN]);
        buf.push(name.len() as u8);
        buf.extend_from_slice(name);
        buf.resize(TAG_LEN + padded, 0);
        let ad = name_ad(parent);
        let (tag_out, body) = buf.split_at_mut(TAG_LEN);
        let tag = Self::siv(&self.name)
            .encrypt_inout_detached([&ad[..]], body.into())
            .expect("SIV over bounded input");
        tag_out.copy_from_slice(&tag);
        Ok(buf)
    }

    pub fn open_name(&self, parent: u64, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < TAG_LEN + 32 {
            return Err(CryptoError::Malformed("sealed name too short"));
        }
        let tag = aes_siv::Tag::try_from(&sealed[..TAG_LEN])
            .map_err(|_| CryptoError::Malformed("tag"))?;
        let mut body = sealed[TAG_LEN..].to_vec();
        Self::siv(&self.name)
            .decrypt_inout_detached([&name_ad(parent)[..]], (&mut body[..]).into(), &tag)
            .map_err(|_| CryptoError::Auth)?;
        let len = body[0] as usize;
        if 1 + len > body.len() {
            return Err(CryptoError::Malformed("name length field"));
        }
        Ok(body[1..1 + len].to_vec())
    }

    /// Seals a metadata value; `ad` binds it to its table and key so values
    /// cannot be swapped between records.
    pub fn seal_meta(&self, ad: &[u8], value: &[u8]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(1 + TAG_LEN + value.len());
        buf.push(META_VERSION);
        buf.extend_from_slice(&[0u8; TAG_LEN]);
        buf.extend_from_slice(value);
        let (head, body) = buf.split_at_mut(1 + TAG_LEN);
        let tag = Self::siv(&self.meta)
            .encrypt_inout_detached([&[META_VERSION][..], ad], body.into())
            .expect("SIV over bounded input");
        head[1..].copy_from_slice(&tag);
        buf
    }

    pub fn open_meta(&self, ad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < 1 + TAG_LEN {
            return Err(CryptoError::Malformed("sealed value too short"));
        }
        if sealed[0] != META_VERSION {
            return Err(CryptoError::Malformed("unknown metadata format version"));
        }
        let tag = aes_siv::Tag::try_from(&sealed[1..1 + TAG_LEN])
            .map_err(|_| CryptoError::Malformed("tag"))?;
        let mut body = sealed[1 + TAG_LEN..].to_vec();
        Self::siv(&self.meta)
            .decrypt_inout_detached([&[META_VERSION][..], ad], (&mut body[..]).into(), &tag)
            .map_err(|_| CryptoError::Auth)?;
        Ok(body)
    }
}

const TAG_LEN: usize = 16;
const META_VERSION: u8 = 1;
/// Magic "DZOB", format version 1, suite 1 (AES-256-PMAC-SIV), two reserved bytes.
const OBJECT_HEADER: [u8; 8] = *b"DZOB\x01\x01\x00\x00";
/// Header, tag and the 4-byte length frame.
pub const OBJECT_OVERHEAD: usize = 8 + TAG_LEN + 4;

fn name_ad(parent: u64) -> [u8; 12] {
    let mut ad = [0u8; 12];
    ad[..4].copy_from_slice(b"name");
    ad[4..].copy_from_slice(&parent.to_be_bytes());
    ad
}

/// Size class of a framed plaintext of `len` bytes: at least 256 bytes, then
/// Padmé rounding (at most ~12% overhead), which leaks only O(log log) bits
/// of the length.
pub fn padded_len(len: usize) -> usize {
    let len = len.max(256);
    let e = usize::BITS - 1 - len.leading_zeros(); // floor(log2 len)
    let s = u32::BITS - e.leading_zeros(); // floor(log2 e) + 1
    let low_bits = e - s;
    let mask = (1usize << low_bits) - 1;
    (len + mask) & !mask
}

/// Identifies an object: BLAKE3 of its sealed bytes, so anyone holding it can verify it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectId(pub [u8; 32]);

impl ObjectId {
    pub fn of(sealed: &[u8]) -> Self {
        ObjectId(*blake3::hash(sealed).as_bytes())
    }
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", &self.to_hex()[..16])
    }
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys() -> VaultKeys {
        VaultKeys::from_master(&[7u8; 32])
    }

    #[test]
    fn padding_is_monotone_and_bounded() {
        let mut prev = 0;
        for len in 1..200_000usize {
            let p = padded_len(len);
            assert!(p >= len && p >= prev);
            assert!(p <= len.max(256) + len.max(256) / 8 + 1, "len {len} -> {p}");
            prev = p;
        }
    }

    #[test]
    fn object_tamper_is_detected() {
        let k = keys();
        let mut sealed = k.seal_object(b"hello world");
        for i in [0, 5, 10, 30, sealed.len() - 1] {
            sealed[i] ^= 1;
            assert!(
                k.open_object(sealed.clone()).is_err(),
                "flip at {i} undetected"
            );
            sealed[i] ^= 1;
        }
        assert_eq!(k.open_object(sealed.clone()).unwrap(), b"hello world");
        let other = VaultKeys::from_master(&[8u8; 32]);
        assert!(matches!(
            other.open_object(sealed.clone()),
            Err(CryptoError::Auth)
        ));
    }

    #[test]
    fn sealing_is_deterministic_and_hides_small_sizes() {
        let k = keys();
        assert_eq!(k.seal_object(b"abc"), k.seal_object(b"abc"));
        assert_eq!(k.seal_object(b"a").len(), k.seal_object(&[1u8; 200]).len());
        assert_eq!(k.seal_name(1, b"x").unwrap(), k.seal_name(1, b"x").unwrap());
        assert_ne!(k.seal_name(1, b"x").unwrap(), k.seal_name(2, b"x").unwrap());
        assert_eq!(
            k.seal_name(1, b"a").unwrap().len(),
            k.seal_name(1, b"abcdefghij").unwrap().len()
        );
    }

    #[test]
    fn meta_bound_to_ad() {
        let k = keys();
        let s = k.seal_meta(b"inode1", b"value");
        assert_eq!(k.open_meta(b"inode1", &s).unwrap(), b"value");
        assert!(k.open_meta(b"inode2", &s).is_err());
    }

    #[test]
    fn kdf_refuses_weak_and_huge_params() {
        for p in [
            KdfParams {
                m_kib: 1024,
                t: 3,
                p: 1,
            },
            KdfParams {
                m_kib: 65536,
                t: 1,
                p: 1,
            },
            KdfParams {
                m_kib: 1 << 30,
                t: 3,
                p: 1,
            },
            KdfParams {
                m_kib: 65536,
                t: 3,
                p: 0,
            },
        ] {
            assert!(matches!(
                VaultKeys::derive(b"pw", "v", p),
                Err(CryptoError::BadKdfParams(_))
            ));
        }
    }

    #[test]
    fn kdf_depends_on_name_and_password() {
        let p = KdfParams {
            m_kib: 65536,
            t: 3,
            p: 2,
        };
        let a = VaultKeys::derive(b"pw one", "v", p).unwrap().key_check();
        let b = VaultKeys::derive(b"pw one", "v", p).unwrap().key_check();
        let c = VaultKeys::derive(b"pw two", "v", p).unwrap().key_check();
        let d = VaultKeys::derive(b"pw one", "w", p).unwrap().key_check();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    proptest! {
        #[test]
        fn object_roundtrip(data in proptest::collection::vec(any::<u8>(), 0..70_000)) {
            let k = keys();
            let sealed = k.seal_object(&data);
            prop_assert_eq!(sealed.len(), OBJECT_OVERHEAD - 4 + padded_len(4 + data.len()));
            prop_assert!(sealed.len() <= OBJECT_OVERHEAD + crate::chunk::CHUNK_SIZE);
            prop_assert_eq!(k.open_object(sealed.clone()).unwrap(), data);
        }

        #[test]
        fn name_roundtrip(name in proptest::collection::vec(any::<u8>(), 1..=255), parent in any::<u64>()) {
            let k = keys();
            let sealed = k.seal_name(parent, &name).unwrap();
            prop_assert_eq!(sealed.len() % 32, 16);
            prop_assert_eq!(k.open_name(parent, &sealed).unwrap(), name);
        }
    }
}
