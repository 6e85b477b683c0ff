//! The fragment protocol's codec for libp2p request-response: frames (a
//! 4-byte big-endian length, then the message), with each message type's
//! size limit checked before anything is allocated, a shared byte budget
//! for large requests, and fragments streamed from their files.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

use super::proto::{invalid, Request, Response, Streamed, MAX_HAS, MAX_REASON};
use crate::coder::MAX_FRAGMENT;

/// Largest message of each request type, by its tag (`None`: no such
/// type). Only a PUT carries a fragment; the rest are small.
fn request_limit(tag: u8) -> Option<usize> {
    Some(match tag {
        1 => 1 + 32 + 68 + MAX_FRAGMENT,
        2 | 9 => 1 + 32,
        3 => 1 + 32 * MAX_HAS,
        4 => 1,
        5 => 1 + 4 + 64 * MAX_HAS,
        6 => 1 + 64 * MAX_HAS,
        7 => 1 + 40,
        8 => 1 + 32 + crate::root::MAX_ROOT,
        _ => return None,
    })
}

/// Largest message of each response type, like [`request_limit`].
fn response_limit(tag: u8) -> Option<usize> {
    Some(match tag {
        1 | 3 | 10 => 1,
        2 => 1 + MAX_FRAGMENT,
        4 => 1 + MAX_HAS,
        5 => 1 + 24,
        6 | 7 => 1 + MAX_REASON,
        8 => 1 + crate::maint::audit::MAX_PROOF,
        9 => 1 + crate::root::MAX_ROOT,
        _ => return None,
    })
}

/// Bodies up to this size are read without asking the byte budget.
const SMALL: usize = 64 * 1024;

/// Bytes of large inbound requests a node holds at once (all peers).
pub const INBOUND_BYTES: usize = 64 << 20;

/// One message read off a stream.
pub enum Frame {
    Body(Bytes),
    /// A large message read past unkept: the byte budget was spent.
    Shed,
}

/// A message body and the budget it holds until it is dropped.
struct Held {
    buf: Vec<u8>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

/// Reads one length-prefixed message. The type (its first byte) is read
/// before anything is allocated, and the length checked against that
/// type's `limit`; a large body takes its size from `budget` (if any) for
/// as long as it is kept, or is read past and dropped at once when the
/// budget is spent.
pub async fn read_frame<T: AsyncRead + Unpin>(
    io: &mut T,
    limit: impl Fn(u8) -> Option<usize>,
    budget: Option<&Arc<tokio::sync::Semaphore>>,
) -> io::Result<Frame> {
    let mut head = [0u8; 5];
    io.read_exact(&mut head[..4]).await?;
    let len = u32::from_be_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    if len == 0 {
        return Err(invalid("empty message"));
    }
    io.read_exact(&mut head[4..]).await?;
    let tag = head[4];
    let max = limit(tag).ok_or_else(|| invalid(format!("unknown message type {tag}")))?;
    if len > max {
        return Err(invalid(format!(
            "message of type {tag} and {len} bytes is over its {max}-byte limit"
        )));
    }
    let permit = match budget {
        Some(b) if len > SMALL => {
            let n = u32::try_from(len).map_err(|_| invalid("message too large"))?;
            // No waiting: bytes left unread would pile up in the
            // multiplexer's buffers instead.
            match b.clone().try_acquire_many_owned(n) {
                Ok(p) => Some(p),
                Err(_) => {
                    let rest = (len - 1) as u64;
                    let skipped =
                        futures::io::copy(&mut (&mut *io).take(rest), &mut futures::io::sink())
                            .await?;
                    if skipped != rest {
                        return Err(invalid("message cut short"));
                    }
                    return Ok(Frame::Shed);
                }
            }
        }
        _ => None,
    };
    let mut buf = vec![0u8; len];
    buf[0] = tag;
    io.read_exact(&mut buf[1..]).await?;
    Ok(Frame::Body(match permit {
        Some(p) => Bytes::from_owner(Held { buf, _permit: p }),
        None => Bytes::from(buf),
    }))
}

/// Pieces a streamed fragment is read and sent in (one held per stream
/// while the peer takes it).
const PIECE: usize = 32 * 1024;

/// Piece reads on the blocking pool at once, for all streams (so that
/// thousands of slow readers never mean thousands of threads).
const PIECE_READS: usize = 8;

/// Writes a fragment from its file as one `Fragment` message, a piece at
/// a time (each read on the blocking pool, a few at once).
async fn write_streamed<T: AsyncWrite + Unpin>(
    io: &mut T,
    s: Streamed,
    reads: &Arc<tokio::sync::Semaphore>,
) -> io::Result<()> {
    let len = u32::try_from(1 + s.len).map_err(|_| invalid("message too large"))?;
    let mut head = len.to_be_bytes().to_vec();
    head.push(2);
    io.write_all(&head).await?;
    let mut at = 0u64;
    while at < s.len {
        let n = (s.len - at).min(PIECE as u64) as usize;
        let file = s.file.clone();
        let turn = reads
            .clone()
            .acquire_owned()
            .await
            .map_err(io::Error::other)?;
        let piece = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let mut b = vec![0u8; n];
            std::os::unix::fs::FileExt::read_exact_at(&*file, &mut b, at).map(|_| b)
        })
        .await
        .map_err(io::Error::other)??;
        io.write_all(&piece).await?;
        at += n as u64;
    }
    io.close().await
}

/// Writes one length-prefixed message: `head`, then `payload` uncopied.
pub async fn write_frame<T: AsyncWrite + Unpin>(
    io: &mut T,
    (head, payload): (Vec<u8>, Bytes),
) -> io::Result<()> {
    let len =
        u32::try_from(head.len() + payload.len()).map_err(|_| invalid("message too large"))?;
    let mut first = Vec::with_capacity(4 + head.len());
    first.extend_from_slice(&len.to_be_bytes());
    first.extend_from_slice(&head);
    io.write_all(&first).await?;
    io.write_all(&payload).await?;
    io.close().await
}

/// The request-response codec. Counts requests it rejects as malformed
/// (libp2p drops such streams without an event); large requests share a
/// budget of [`INBOUND_BYTES`].
#[derive(Clone)]
pub struct Codec {
    pub rejected: Arc<AtomicU64>,
    pub budget: Arc<tokio::sync::Semaphore>,
    /// Turns to read a piece of a streamed fragment.
    pub reads: Arc<tokio::sync::Semaphore>,
}

impl Default for Codec {
    fn default() -> Self {
        Codec {
            rejected: Arc::default(),
            budget: Arc::new(tokio::sync::Semaphore::new(INBOUND_BYTES)),
            reads: Arc::new(tokio::sync::Semaphore::new(PIECE_READS)),
        }
    }
}

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        let r = match read_frame(io, request_limit, Some(&self.budget)).await {
            Ok(Frame::Body(body)) => Request::decode(body),
            Ok(Frame::Shed) => Ok(Request::Shed),
            Err(e) => Err(e),
        };
        if let Err(e) = &r {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("rejected a malformed request: {e}");
        }
        r
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        match read_frame(io, response_limit, None).await? {
            Frame::Body(body) => Response::decode(body),
            Frame::Shed => Err(invalid("a response was dropped unread")),
        }
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        r: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, r.encode()).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        r: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match r {
            Response::Streamed(s) => write_streamed(io, s, &self.reads).await,
            r => write_frame(io, r.encode()).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, len: u32, body: usize) -> futures::io::Cursor<Vec<u8>> {
        let mut wire = len.to_be_bytes().to_vec();
        wire.push(tag);
        wire.extend(std::iter::repeat_n(0u8, body));
        futures::io::Cursor::new(wire)
    }

    #[test]
    fn oversized_frames_are_refused_before_allocation() {
        let read = |mut cur| {
            futures::executor::block_on(read_frame(&mut cur, request_limit, None)).map(|_| ())
        };
        let err = read(frame(1, u32::MAX, 16)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // The type is read first: only a PUT may be large.
        for tag in [2, 3, 4, 5, 6, 7, 8, 9] {
            let limit = request_limit(tag).unwrap() as u32;
            assert!(limit < (300 << 10), "type {tag} may be {limit} bytes");
            let err = read(frame(tag, limit + 1, 0)).unwrap_err();
            assert!(err.to_string().contains("limit"), "{err}");
        }
        assert!(read(frame(0, 10, 9)).is_err());
        assert!(read(frame(1, 0, 0)).is_err());
        // A frame cut short is an error too.
        assert!(read(frame(2, 10, 2)).is_err());
    }

    #[tokio::test]
    async fn large_requests_beyond_the_byte_budget_are_read_past_and_shed() {
        let budget = Arc::new(tokio::sync::Semaphore::new(1 << 20));
        let len = 700 << 10;
        let mut cur = frame(1, len, len as usize - 1);
        let Frame::Body(kept) = read_frame(&mut cur, request_limit, Some(&budget))
            .await
            .unwrap()
        else {
            panic!("the first request fits the budget");
        };
        assert_eq!(budget.available_permits(), (1 << 20) - len as usize);
        // The next one does not fit while the first is held: read past.
        let mut wire = frame(1, len, len as usize - 1).into_inner();
        wire.extend_from_slice(&frame(4, 1, 0).into_inner());
        let mut cur = futures::io::Cursor::new(wire);
        let shed = read_frame(&mut cur, request_limit, Some(&budget))
            .await
            .unwrap();
        assert!(matches!(shed, Frame::Shed));
        // The stream stays in step: the message after it reads fine.
        let next = read_frame(&mut cur, request_limit, Some(&budget))
            .await
            .unwrap();
        assert!(matches!(next, Frame::Body(b) if b[..] == [4]));
        // Dropping the kept body gives its bytes back.
        drop(kept);
        assert_eq!(budget.available_permits(), 1 << 20);
    }
}
