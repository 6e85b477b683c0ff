//! Chunk geometry: file content is cut into fixed-size chunks aligned to file
//! offsets, so a write at any offset touches only the chunks it overlaps.
//!
//! Architecture invariant: pure functions, no IO, no keys.

/// Bytes of file content per chunk (the largest object plaintext).
pub const CHUNK_SIZE: usize = 4 << 20;

/// Index of the chunk holding byte `offset`.
pub fn index_of(offset: u64) -> u64 {
    offset / CHUNK_SIZE as u64
}

/// File offset where chunk `index` starts.
pub fn start_of(index: u64) -> u64 {
    index * CHUNK_SIZE as u64
}

/// One piece of a byte range, confined to a single chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Chunk index.
    pub index: u64,
    /// Offset inside the chunk.
    pub within: usize,
    /// Length of the piece.
    pub len: usize,
    /// Offset of the piece inside the caller's buffer.
    pub buf_offset: usize,
}

/// Splits the range `[offset, offset + len)` at chunk boundaries.
pub fn pieces(offset: u64, len: usize) -> impl Iterator<Item = Piece> {
    let end = offset + len as u64;
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let index = index_of(pos);
        let within = (pos - start_of(index)) as usize;
        let take = ((CHUNK_SIZE - within) as u64).min(end - pos) as usize;
        let piece = Piece {
            index,
            within,
            len: take,
            buf_offset: (pos - offset) as usize,
        };
        pos += take as u64;
        Some(piece)
    })
}

/// Length of the content of chunk `index` in a file of `size` bytes.
pub fn len_in_file(index: u64, size: u64) -> usize {
    let start = start_of(index);
    if size <= start {
        0
    } else {
        ((size - start) as usize).min(CHUNK_SIZE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn boundaries() {
        let c = CHUNK_SIZE as u64;
        let p: Vec<_> = pieces(c - 1, 2).collect();
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[0],
            Piece {
                index: 0,
                within: CHUNK_SIZE - 1,
                len: 1,
                buf_offset: 0
            }
        );
        assert_eq!(
            p[1],
            Piece {
                index: 1,
                within: 0,
                len: 1,
                buf_offset: 1
            }
        );
        assert_eq!(pieces(5, 0).count(), 0);
        assert_eq!(len_in_file(0, 10), 10);
        assert_eq!(len_in_file(1, c), 0);
        assert_eq!(len_in_file(1, c + 3), 3);
        assert_eq!(len_in_file(0, 3 * c), CHUNK_SIZE);
    }

    proptest! {
        #[test]
        fn pieces_tile_the_range(offset in 0u64..(1 << 40), len in 0usize..(20 << 20)) {
            let mut expect_pos = offset;
            let mut expect_buf = 0usize;
            for p in pieces(offset, len) {
                prop_assert_eq!(start_of(p.index) + p.within as u64, expect_pos);
                prop_assert_eq!(p.buf_offset, expect_buf);
                prop_assert!(p.len > 0 && p.within + p.len <= CHUNK_SIZE);
                expect_pos += p.len as u64;
                expect_buf += p.len;
            }
            prop_assert_eq!(expect_buf, len);
        }
    }
}
