//! drizzle: a peer-to-peer encrypted cloud drive.
//!
//! See ARCHITECTURE.md for the code map. Data flows
//! `mount` -> `vault` (write-back buffer) -> `chunk` -> `crypto` -> `store`
//! on writes and back on reads.

pub mod cache;
pub mod chunk;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod daemon;
pub mod demo;
pub mod mount;
pub mod store;
pub mod vault;
