//! Integration tests: a real FUSE mount through the real `drizzle` binary.

mod cli;
mod data;
mod posix;
mod support;
