//! The fragment protocol: PUT, GET, HAS and a capacity query over
//! libp2p request-response, with a length-prefixed binary codec.
//!
//! Wire format (both directions): a 4-byte big-endian length, then that many
//! bytes: a tag byte and the message's fields. Lengths over the limits are
//! refused before anything is allocated; every decoder rejects bad input
//! with an error (the stream is then dropped), never a panic.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

use crate::coder::{FragmentId, MAX_FRAGMENT};
pub use crate::fragstore::{Capacity, LeaseTerms};

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/drizzle/fragments/1");
/// Most ids in one HAS request.
pub const MAX_HAS: usize = 4096;
/// Longest reason text in a refusal.
const MAX_REASON: usize = 1024;

fn take_items(rest: &[u8]) -> io::Result<Vec<(FragmentId, [u8; 32])>> {
    if rest.len() % 64 != 0 || rest.len() / 64 > MAX_HAS {
        return Err(invalid("bad lease list"));
    }
    Ok(rest
        .chunks_exact(64)
        .map(|c| {
            (
                FragmentId(c[..32].try_into().expect("32 bytes")),
                c[32..].try_into().expect("32 bytes"),
            )
        })
        .collect())
}

#[derive(Clone, PartialEq, Eq)]
pub enum Request {
    /// Store a fragment under its id (BLAKE3 of the bytes, checked).
    /// `Bytes`: retries and the codec share the buffer instead of copying.
    Put {
        id: FragmentId,
        lease: LeaseTerms,
        data: Bytes,
    },
    /// Extend leases: each fragment with its renew secret.
    Renew {
        secs: u32,
        items: Vec<(FragmentId, [u8; 32])>,
    },
    /// End leases (the fragments are deleted): each with its cancel secret.
    Cancel {
        items: Vec<(FragmentId, [u8; 32])>,
    },
    Get {
        id: FragmentId,
    },
    /// Prove possession: a Bao proof of the 1 KiB slice at `start`,
    /// checked against the fragment id (see [`crate::maint::audit`]).
    Audit {
        id: FragmentId,
        start: u64,
    },
    Has {
        ids: Vec<FragmentId>,
    },
    Capacity,
    /// Keep a vault's root record (checked: signature, key, newer sequence).
    RootPut {
        key: [u8; 32],
        record: Vec<u8>,
    },
    /// The root record held under a key.
    RootGet {
        key: [u8; 32],
    },
    /// Never on the wire: a request the codec read past without keeping
    /// it, because the node's budget of inbound bytes was spent (answered
    /// `Busy`).
    Shed,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Put { id, data, .. } => write!(f, "Put({id}, {}B)", data.len()),
            Request::Renew { items, .. } => write!(f, "Renew({} leases)", items.len()),
            Request::Cancel { items } => write!(f, "Cancel({} leases)", items.len()),
            Request::Get { id } => write!(f, "Get({id})"),
            Request::Audit { id, .. } => write!(f, "Audit({id})"),
            Request::Has { ids } => write!(f, "Has({} ids)", ids.len()),
            Request::Capacity => write!(f, "Capacity"),
            Request::RootPut { record, .. } => write!(f, "RootPut({}B)", record.len()),
            Request::RootGet { .. } => write!(f, "RootGet"),
            Request::Shed => write!(f, "Shed"),
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub enum Response {
    Stored,
    Fragment(Bytes),
    /// Sent as a `Fragment`, read from its file piece by piece while the
    /// stream takes it (the node never holds a whole large fragment for a
    /// peer that does not read); never decoded.
    Streamed(Streamed),
    NotFound,
    Has(Vec<bool>),
    Capacity(Capacity),
    /// The answer to an audit: a Bao slice.
    Proof(Vec<u8>),
    /// A root record.
    Root(Vec<u8>),
    /// The node will not store this (full, over quota): the reason says why.
    Refused(String),
    /// The request was understood but failed on the node.
    Failed(String),
    /// The node has too much inbound work queued: ask again later or ask
    /// another holder (not a fault of the node).
    Busy,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Response::Fragment(d) => write!(f, "Fragment({}B)", d.len()),
            Response::Streamed(s) => write!(f, "Fragment({}B, streamed)", s.len),
            Response::Stored => write!(f, "Stored"),
            Response::NotFound => write!(f, "NotFound"),
            Response::Has(v) => write!(f, "Has({v:?})"),
            Response::Capacity(c) => write!(f, "{c:?}"),
            Response::Proof(_) => write!(f, "Proof"),
            Response::Root(r) => write!(f, "Root({}B)", r.len()),
            Response::Refused(r) => write!(f, "Refused({r})"),
            Response::Failed(r) => write!(f, "Failed({r})"),
            Response::Busy => write!(f, "Busy"),
        }
    }
}

fn invalid(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

fn take_id(b: &[u8]) -> io::Result<(FragmentId, &[u8])> {
    if b.len() < 32 {
        return Err(invalid("truncated fragment id"));
    }
    Ok((FragmentId(b[..32].try_into().expect("32 bytes")), &b[32..]))
}

fn reason(b: &[u8]) -> io::Result<String> {
    if b.len() > MAX_REASON {
        return Err(invalid("reason text too long"));
    }
    String::from_utf8(b.to_vec()).map_err(|_| invalid("reason text is not UTF-8"))
}

impl Request {
    /// The message as (head, payload): a fragment payload is written as
    /// is, never copied into the head.
    pub fn encode(&self) -> (Vec<u8>, Bytes) {
        let mut out = Vec::new();
        match self {
            Request::Put { id, lease, data } => {
                out.push(1);
                out.extend_from_slice(&id.0);
                out.extend_from_slice(&lease.renew_hash);
                out.extend_from_slice(&lease.cancel_hash);
                out.extend_from_slice(&lease.secs.to_be_bytes());
                return (out, data.clone());
            }
            Request::Renew { secs, items } => {
                out.push(5);
                out.extend_from_slice(&secs.to_be_bytes());
                for (id, s) in items {
                    out.extend_from_slice(&id.0);
                    out.extend_from_slice(s);
                }
            }
            Request::Cancel { items } => {
                out.push(6);
                for (id, s) in items {
                    out.extend_from_slice(&id.0);
                    out.extend_from_slice(s);
                }
            }
            Request::Get { id } => {
                out.push(2);
                out.extend_from_slice(&id.0);
            }
            Request::Audit { id, start } => {
                out.push(7);
                out.extend_from_slice(&id.0);
                out.extend_from_slice(&start.to_be_bytes());
            }
            Request::Has { ids } => {
                out.push(3);
                for id in ids {
                    out.extend_from_slice(&id.0);
                }
            }
            Request::Capacity => out.push(4),
            Request::RootPut { key, record } => {
                out.push(8);
                out.extend_from_slice(key);
                out.extend_from_slice(record);
            }
            Request::RootGet { key } => {
                out.push(9);
                out.extend_from_slice(key);
            }
            // Tag 0 is no request: a receiver refuses it.
            Request::Shed => out.push(0),
        }
        (out, Bytes::new())
    }

    pub fn decode(body: Bytes) -> io::Result<Self> {
        let b = &body[..];
        let (&tag, rest) = b.split_first().ok_or_else(|| invalid("empty request"))?;
        match tag {
            1 => {
                let (id, rest) = take_id(rest)?;
                if rest.len() < 68 {
                    return Err(invalid("truncated lease terms"));
                }
                let lease = LeaseTerms {
                    renew_hash: rest[..32].try_into().expect("32 bytes"),
                    cancel_hash: rest[32..64].try_into().expect("32 bytes"),
                    secs: u32::from_be_bytes(rest[64..68].try_into().expect("4 bytes")),
                };
                if rest.len() - 68 > MAX_FRAGMENT {
                    return Err(invalid("fragment over the size limit"));
                }
                Ok(Request::Put {
                    id,
                    lease,
                    data: body.slice(1 + 32 + 68..),
                })
            }
            5 => {
                if rest.len() < 4 {
                    return Err(invalid("truncated RENEW"));
                }
                let secs = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes"));
                Ok(Request::Renew {
                    secs,
                    items: take_items(&rest[4..])?,
                })
            }
            6 => Ok(Request::Cancel {
                items: take_items(rest)?,
            }),
            7 if rest.len() == 40 => Ok(Request::Audit {
                id: FragmentId(rest[..32].try_into().expect("32 bytes")),
                start: u64::from_be_bytes(rest[32..].try_into().expect("8 bytes")),
            }),
            2 => {
                let (id, rest) = take_id(rest)?;
                if !rest.is_empty() {
                    return Err(invalid("trailing bytes after GET"));
                }
                Ok(Request::Get { id })
            }
            3 => {
                if rest.len() % 32 != 0 || rest.len() / 32 > MAX_HAS {
                    return Err(invalid("bad HAS id list"));
                }
                let ids = rest
                    .chunks_exact(32)
                    .map(|c| FragmentId(c.try_into().expect("32 bytes")))
                    .collect();
                Ok(Request::Has { ids })
            }
            4 if rest.is_empty() => Ok(Request::Capacity),
            8 if rest.len() >= 32 && rest.len() - 32 <= crate::root::MAX_ROOT => {
                Ok(Request::RootPut {
                    key: rest[..32].try_into().expect("32 bytes"),
                    record: rest[32..].to_vec(),
                })
            }
            9 if rest.len() == 32 => Ok(Request::RootGet {
                key: rest.try_into().expect("32 bytes"),
            }),
            _ => Err(invalid(format!("unknown request type {tag}"))),
        }
    }
}

impl Response {
    /// The message as (head, payload), like [`Request::encode`].
    pub fn encode(&self) -> (Vec<u8>, Bytes) {
        let mut out = Vec::new();
        match self {
            Response::Stored => out.push(1),
            Response::Fragment(d) => {
                out.push(2);
                return (out, d.clone());
            }
            // The codec writes the payload itself (see `write_streamed`).
            Response::Streamed(_) => out.push(2),
            Response::NotFound => out.push(3),
            Response::Has(v) => {
                out.push(4);
                out.extend(v.iter().map(|b| *b as u8));
            }
            Response::Proof(p) => {
                out.push(8);
                out.extend_from_slice(p);
            }
            Response::Root(r) => {
                out.push(9);
                out.extend_from_slice(r);
            }
            Response::Busy => out.push(10),
            Response::Capacity(c) => {
                out.push(5);
                for v in [c.donated, c.used, c.available] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
            }
            Response::Refused(r) | Response::Failed(r) => {
                out.push(if matches!(self, Response::Refused(_)) {
                    6
                } else {
                    7
                });
                let mut end = r.len().min(MAX_REASON);
                while !r.is_char_boundary(end) {
                    end -= 1;
                }
                out.extend_from_slice(&r.as_bytes()[..end]);
            }
        }
        (out, Bytes::new())
    }

    pub fn decode(body: Bytes) -> io::Result<Self> {
        let b = &body[..];
        let (&tag, rest) = b.split_first().ok_or_else(|| invalid("empty response"))?;
        let empty = |r: Response| {
            if rest.is_empty() {
                Ok(r)
            } else {
                Err(invalid("trailing bytes in response"))
            }
        };
        match tag {
            1 => empty(Response::Stored),
            2 if rest.len() <= MAX_FRAGMENT => Ok(Response::Fragment(body.slice(1..))),
            3 => empty(Response::NotFound),
            4 if rest.len() <= MAX_HAS && rest.iter().all(|b| *b <= 1) => {
                Ok(Response::Has(rest.iter().map(|b| *b == 1).collect()))
            }
            5 if rest.len() == 24 => {
                let at = |i: usize| u64::from_be_bytes(rest[i..i + 8].try_into().expect("8"));
                Ok(Response::Capacity(Capacity {
                    donated: at(0),
                    used: at(8),
                    available: at(16),
                }))
            }
            6 => Ok(Response::Refused(reason(rest)?)),
            8 if rest.len() <= crate::maint::audit::MAX_PROOF => Ok(Response::Proof(rest.to_vec())),
            7 => Ok(Response::Failed(reason(rest)?)),
            9 if rest.len() <= crate::root::MAX_ROOT => Ok(Response::Root(rest.to_vec())),
            10 => empty(Response::Busy),
            _ => Err(invalid(format!("bad response type {tag}"))),
        }
    }
}

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

/// A stored fragment sent from its file (see [`Response::Streamed`]).
#[derive(Clone)]
pub struct Streamed {
    pub file: Arc<std::fs::File>,
    pub len: u64,
    /// Released when the answer is written (or its stream dropped): the
    /// peer's share of requests in flight.
    pub hold: Arc<dyn std::any::Any + Send + Sync>,
}

impl PartialEq for Streamed {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.file, &other.file) && self.len == other.len
    }
}

impl Eq for Streamed {}

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

    fn flat((head, payload): (Vec<u8>, Bytes)) -> Vec<u8> {
        [head.as_slice(), &payload].concat()
    }

    fn roundtrip_req(r: Request) {
        assert_eq!(Request::decode(flat(r.encode()).into()).unwrap(), r);
    }

    #[test]
    fn messages_roundtrip() {
        let id = FragmentId([7; 32]);
        roundtrip_req(Request::Put {
            id,
            lease: LeaseTerms::new(&[1; 32], &[2; 32], 60),
            data: Bytes::from_static(&[1, 2, 3]),
        });
        roundtrip_req(Request::Renew {
            secs: 9,
            items: vec![(id, [3; 32]), (id, [4; 32])],
        });
        roundtrip_req(Request::Cancel {
            items: vec![(id, [5; 32])],
        });
        roundtrip_req(Request::Get { id });
        roundtrip_req(Request::Audit { id, start: 6 << 10 });
        roundtrip_req(Request::Has { ids: vec![id, id] });
        roundtrip_req(Request::Capacity);
        roundtrip_req(Request::RootPut {
            key: [1; 32],
            record: vec![2; 300],
        });
        roundtrip_req(Request::RootGet { key: [3; 32] });
        for r in [
            Response::Root(vec![4; 200]),
            Response::Stored,
            Response::Fragment(vec![9; 100].into()),
            Response::NotFound,
            Response::Has(vec![true, false]),
            Response::Capacity(Capacity {
                donated: 1,
                used: 2,
                available: 3,
            }),
            Response::Proof(vec![8; 1500]),
            Response::Refused("full".into()),
            Response::Failed("disk".into()),
            Response::Busy,
        ] {
            assert_eq!(Response::decode(flat(r.encode()).into()).unwrap(), r);
        }
    }

    #[test]
    fn malformed_messages_are_errors() {
        for bad in [
            &[][..],
            &[0],
            &[1, 2, 3],
            &[2; 40],
            &[3; 34],
            &[4, 0],
            &[9; 20],
            &[8; 10],
            &[99],
        ] {
            assert!(Request::decode(bad.to_vec().into()).is_err(), "{bad:?}");
        }
        for bad in [
            &[][..],
            &[1, 0],
            &[4, 2],
            &[5, 0, 0],
            &[6, 0xff, 0xfe],
            &[0],
        ] {
            assert!(Response::decode(bad.to_vec().into()).is_err(), "{bad:?}");
        }
    }

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
