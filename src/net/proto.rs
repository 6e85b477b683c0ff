//! The fragment protocol's messages: PUT, GET, HAS, RENEW, CANCEL, AUDIT,
//! a capacity query and root records, as requests and responses over
//! libp2p request-response (framed by [`super::codec`]).
//!
//! Each message is a tag byte and its fields (docs/FORMAT.md). Every
//! decoder rejects bad input with an error (the stream is then dropped),
//! never a panic.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use libp2p::StreamProtocol;

use crate::coder::{FragmentId, MAX_FRAGMENT};
pub use crate::fragstore::{Capacity, LeaseTerms};

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/drizzle/fragments/1");
/// Most ids in one HAS request.
pub const MAX_HAS: usize = 4096;
/// Longest reason text in a refusal.
pub(super) const MAX_REASON: usize = 1024;

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

pub(super) fn invalid(why: impl Into<String>) -> io::Error {
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
}
