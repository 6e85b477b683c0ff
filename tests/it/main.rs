//! Integration tests: real FUSE mounts through the real `drizzle` binary,
//! real libp2p nodes on 127.0.0.1 (in-process clusters and `drizzle node`
//! processes).

mod cli;
mod cluster;
mod data;
mod engine;
mod faultfs;
mod flood;
mod hostile;
mod inproc;
mod local;
mod localnet;
mod months;
mod network;
mod parsers;
mod posix;
mod reallife;
mod recovery;
mod service;
mod simulate;
mod support;
mod sybil;
mod tidy;
