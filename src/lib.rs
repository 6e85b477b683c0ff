//! drizzle: a peer-to-peer encrypted cloud drive.
//!
//! See ARCHITECTURE.md for the code map. Data flows
//! `mount` -> `vault` (write-back buffer) -> `chunk` -> `crypto` -> `store`
//! on writes, then `remote` -> `coder` -> `placement` -> `net` in the
//! background; reads come back the other way.

pub mod cache;
pub mod chunk;
pub mod cli;
pub mod coder;
pub mod config;
pub mod crypto;
pub mod daemon;
pub mod demo;
pub mod fragstore;
pub mod logging;
pub mod maint;
pub mod metasync;
pub mod metrics;
pub mod mount;
pub mod net;
pub mod placement;
pub mod quota;
pub mod recover;
pub mod remote;
pub mod root;
pub mod settings;
pub mod sim;
pub mod store;
pub mod units;
pub mod vault;
