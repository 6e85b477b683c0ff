//! The `drizzle` binary: logging setup and the CLI. No logic here.

use clap::Parser;

fn main() {
    let cli = drizzle::cli::Cli::parse();
    let default = match cli.command {
        drizzle::cli::Cmd::Mount { .. } => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = drizzle::cli::run(cli) {
        eprintln!("drizzle: {e:#}");
        std::process::exit(1);
    }
}
