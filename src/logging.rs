//! Log output: `RUST_LOG`-style filters (the environment wins over the
//! config file); human-readable with colours on a terminal; under systemd
//! (stderr connected to the journal) plain lines without colours or
//! timestamps, since journald adds its own.
//!
//! Secrets never reach the log: key types have no `Debug`, and nothing logs
//! passwords or key material (a test greps every log for them).

use tracing_subscriber::EnvFilter;

/// True when stderr goes to the systemd journal.
fn under_journald() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some()
}

pub fn init(config_filter: Option<&str>, default: &str) {
    let filter = EnvFilter::try_from_default_env()
        .ok()
        .or_else(|| config_filter.and_then(|f| EnvFilter::try_new(f).ok()))
        .unwrap_or_else(|| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if under_journald() {
        builder
            .without_time()
            .with_ansi(false)
            .with_target(false)
            .init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}
