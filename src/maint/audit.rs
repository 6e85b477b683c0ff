//! Possession audits that cannot be replayed. A fragment's id is the
//! BLAKE3 hash of its bytes, and BLAKE3 is a Merkle tree, so a holder can
//! prove any slice of the fragment with a Bao proof that the vault checks
//! against the id alone: a fresh random challenge every time, nothing kept
//! per fragment, and a holder that dropped the bytes cannot answer.
//!
//! Audits are a sample within a budget: each fragment on a connected
//! holder is picked with a probability that makes the expected bytes a
//! holder reads for us at most `fraction` of what it stores for us per day
//! (answering reads the whole fragment to hash it).

use std::io::Read;

use rand::Rng;

use crate::coder::FragmentId;

/// Bytes of the fragment one audit asks for.
pub const SLICE: u64 = 1024;
/// Largest proof a holder may send (a 1 KiB slice of a fragment of up to
/// 16 MiB, with its Merkle path, is about 2.2 KiB).
pub const MAX_PROOF: usize = 8 * 1024;
/// Default audit budget: 1% of the bytes a holder keeps for us, per day.
pub const DEFAULT_FRACTION: f64 = 0.01;

/// Why a proof was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuditError {
    #[error("the proof does not match the fragment id ({0})")]
    Mismatch(String),
    #[error("the proof covers {got} bytes, not {want}")]
    Short { got: usize, want: usize },
}

/// A fresh challenge: the start of a random 1 KiB-aligned slice.
pub fn challenge(fragment_len: u64, rng: &mut impl Rng) -> u64 {
    let slices = fragment_len.div_ceil(SLICE).max(1);
    rng.random_range(0..slices) * SLICE
}

/// The holder's answer: a Bao slice of `fragment` at `start`.
pub fn prove(fragment: &[u8], start: u64) -> Vec<u8> {
    let (outboard, _) = bao::encode::outboard(fragment);
    let mut ex = bao::encode::SliceExtractor::new_outboard(
        std::io::Cursor::new(fragment),
        std::io::Cursor::new(&outboard),
        start,
        SLICE,
    );
    let mut out = Vec::new();
    // Reading from memory cannot fail.
    let _ = ex.read_to_end(&mut out);
    out
}

/// Checks a holder's answer against the fragment id alone.
pub fn verify(
    id: &FragmentId,
    fragment_len: u64,
    start: u64,
    proof: &[u8],
) -> Result<(), AuditError> {
    if start >= fragment_len {
        // A slice past the end proves nothing.
        return Err(AuditError::Short {
            got: 0,
            want: SLICE as usize,
        });
    }
    let hash = blake3::Hash::from_bytes(id.0);
    let mut dec = bao::decode::SliceDecoder::new(proof, &hash, start, SLICE);
    let mut out = Vec::new();
    dec.read_to_end(&mut out)
        .map_err(|e| AuditError::Mismatch(e.to_string()))?;
    let want = fragment_len.saturating_sub(start).min(SLICE) as usize;
    if out.len() != want {
        return Err(AuditError::Short {
            got: out.len(),
            want,
        });
    }
    Ok(())
}

/// Whether to audit one fragment in a pass `elapsed` seconds after the
/// last, with a budget of `fraction` of the stored bytes per day.
pub fn picked(fraction: f64, elapsed: u64, rng: &mut impl Rng) -> bool {
    let p = fraction * elapsed as f64 / 86_400.0;
    p >= 1.0 || rng.random_bool(p.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn fresh_challenges_prove_possession_and_catch_rot() {
        let object: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let frags = crate::coder::encode(&object, 4, 0..6).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for f in &frags {
            let len = f.bytes.len() as u64;
            for _ in 0..8 {
                let at = challenge(len, &mut rng);
                assert!(at < len);
                verify(&f.id, len, at, &prove(&f.bytes, at)).unwrap();
            }
            // The last, partial slice.
            let last = (len - 1) / SLICE * SLICE;
            verify(&f.id, len, last, &prove(&f.bytes, last)).unwrap();
        }
        let f = &frags[5];
        let len = f.bytes.len() as u64;
        // A holder that rotted one byte fails a challenge over it...
        let mut rotted = f.bytes.clone();
        rotted[3000] ^= 1;
        assert!(verify(&f.id, len, 2048, &prove(&rotted, 2048)).is_err());
        // ...one that kept another fragment, a truncated one, or an answer
        // for another slice fails too.
        assert!(verify(&f.id, len, 0, &prove(&frags[0].bytes, 0)).is_err());
        assert!(verify(&f.id, len, 0, &prove(&f.bytes[..1000], 0)).is_err());
        assert!(verify(&f.id, len, 4096, &prove(&f.bytes, 0)).is_err());
        assert!(verify(&f.id, len, len + SLICE, &prove(&f.bytes, len + SLICE)).is_err());
        assert!(prove(&f.bytes, 0).len() <= MAX_PROOF);
    }

    #[test]
    fn sampling_stays_within_the_budget() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        // 10,000 fragments, passes every minute for a day at 1%: about 100.
        let mut n = 0;
        for _ in 0..1440 {
            for _ in 0..10_000 {
                n += picked(0.01, 60, &mut rng) as u32;
            }
        }
        assert!((80..120).contains(&n), "{n}");
        assert!(picked(1e9, 1, &mut rng));
        assert!(!picked(0.0, 60, &mut rng));
    }
}
