//! The root record: the one small, signed record a vault publishes so it
//! can be found again from its name and password alone (DESIGN.md section 4).
//!
//! Layout (all integers big-endian), see docs/FORMAT.md "Root record":
//! `"DZRT" | version u8 | public key [32] | seq u64 | Argon2 m_kib, t, p (u32
//! each) | payload length u32 | payload | Ed25519 signature [64]`.
//! The payload is sealed under the vault's metadata key; the signature covers
//! everything before it. The record is stored under [`dht_key`] of the public
//! key, so a node can check that a record belongs under its key, that its
//! signature holds and that its sequence number grows, without learning
//! anything about the vault.
//!
//! Invariant: pure (no IO); shared by nodes (which validate) and vaults
//! (which sign, and validate against their own derived key).

use ed25519_dalek::Signer;

use crate::crypto::KdfParams;

const MAGIC: &[u8; 4] = b"DZRT";
const VERSION: u8 = 1;
/// Fixed bytes around the payload: magic, version, key, seq, KDF, length, signature.
const FIXED: usize = 4 + 1 + 32 + 8 + 12 + 4 + 64;
/// Largest record accepted anywhere (Kademlia messages are capped at 16 KiB).
pub const MAX_ROOT: usize = 12 * 1024;
/// Domain separation for the signature.
const SIGN_CONTEXT: &[u8] = b"drizzle root record v1\0";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RootError {
    #[error("malformed root record: {0}")]
    Malformed(&'static str),
    #[error("root record signature does not verify")]
    BadSignature,
    #[error("root record is stored under the wrong key")]
    WrongKey,
}

/// A parsed root record (the payload still sealed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootRecord {
    pub pubkey: [u8; 32],
    pub seq: u64,
    pub kdf: KdfParams,
    pub payload: Vec<u8>,
    pub sig: [u8; 64],
}

/// The DHT key of a vault's root record: a hash of its public key.
pub fn dht_key(pubkey: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key("drizzle 2026 root record key v1", pubkey)
}

impl RootRecord {
    /// Signs a new record.
    pub fn sign(
        key: &ed25519_dalek::SigningKey,
        seq: u64,
        kdf: KdfParams,
        payload: Vec<u8>,
    ) -> Self {
        let mut r = RootRecord {
            pubkey: key.verifying_key().to_bytes(),
            seq,
            kdf,
            payload,
            sig: [0; 64],
        };
        r.sig = key.sign(&r.signed_message()).to_bytes();
        r
    }

    fn body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED + self.payload.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.pubkey);
        out.extend_from_slice(&self.seq.to_be_bytes());
        for v in [self.kdf.m_kib, self.kdf.t, self.kdf.p] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&(self.payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    fn signed_message(&self) -> Vec<u8> {
        [SIGN_CONTEXT, &self.body()].concat()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.body();
        out.extend_from_slice(&self.sig);
        out
    }

    /// The key this record must be stored under.
    pub fn key(&self) -> [u8; 32] {
        dht_key(&self.pubkey)
    }

    /// Parses the layout (sizes and fields only; see [`verify`](Self::verify)).
    pub fn parse(b: &[u8]) -> Result<Self, RootError> {
        if b.len() < FIXED || b.len() > MAX_ROOT {
            return Err(RootError::Malformed("size out of range"));
        }
        if &b[..4] != MAGIC {
            return Err(RootError::Malformed("not a root record"));
        }
        if b[4] != VERSION {
            return Err(RootError::Malformed("unknown version"));
        }
        let u32_at = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let len = u32_at(57) as usize;
        if FIXED + len != b.len() {
            return Err(RootError::Malformed("payload length"));
        }
        Ok(RootRecord {
            pubkey: b[5..37].try_into().expect("32 bytes"),
            seq: u64::from_be_bytes(b[37..45].try_into().expect("8 bytes")),
            kdf: KdfParams {
                m_kib: u32_at(45),
                t: u32_at(49),
                p: u32_at(53),
            },
            payload: b[61..61 + len].to_vec(),
            sig: b[61 + len..].try_into().expect("64 bytes"),
        })
    }

    /// Checks the signature under the record's own public key.
    pub fn verify(&self) -> Result<(), RootError> {
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&self.pubkey)
            .map_err(|_| RootError::Malformed("public key"))?;
        let sig = ed25519_dalek::Signature::from_bytes(&self.sig);
        // Strict: no small-order keys, no non-canonical signatures (a
        // record has exactly one valid signature under one key).
        if vk.is_weak() {
            return Err(RootError::Malformed("weak public key"));
        }
        vk.verify_strict(&self.signed_message(), &sig)
            .map_err(|_| RootError::BadSignature)
    }

    /// Parses and verifies a record found under `key` (what a node checks
    /// before keeping it).
    pub fn check(bytes: &[u8], key: &[u8; 32]) -> Result<Self, RootError> {
        let r = Self::parse(bytes)?;
        if r.key() != *key {
            return Err(RootError::WrongKey);
        }
        r.verify()?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn round_trip_and_tamper() {
        let k = key(7);
        let r = RootRecord::sign(&k, 42, KdfParams::default_strong(), b"sealed".to_vec());
        let bytes = r.encode();
        let back = RootRecord::check(&bytes, &r.key()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.seq, 42);
        // Any flipped bit breaks it.
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(RootRecord::check(&bad, &r.key()).is_err(), "byte {i}");
        }
        // Another key's record under this key is refused.
        let other = RootRecord::sign(&key(8), 43, KdfParams::default_strong(), vec![]);
        assert_eq!(
            RootRecord::check(&other.encode(), &r.key()),
            Err(RootError::WrongKey)
        );
        // Truncated and oversized input.
        assert!(RootRecord::parse(&bytes[..bytes.len() - 1]).is_err());
        assert!(RootRecord::parse(&vec![0; MAX_ROOT + 1]).is_err());
        assert!(RootRecord::parse(&[]).is_err());
    }

    #[test]
    fn a_record_under_a_weak_key_is_refused() {
        // The identity point as key and (R = identity, s = 0) as signature
        // pass a lax check for any message: anyone could write records.
        let mut pubkey = [0u8; 32];
        pubkey[0] = 1;
        let mut sig = [0u8; 64];
        sig[0] = 1;
        let forged = RootRecord {
            pubkey,
            seq: 1,
            kdf: KdfParams::default_strong(),
            payload: b"anything".to_vec(),
            sig,
        };
        assert!(RootRecord::check(&forged.encode(), &forged.key()).is_err());
    }
}
