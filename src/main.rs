//! The `drizzle` binary: config file, logging setup and the CLI. No logic here.

use clap::Parser;

fn main() {
    drizzle::daemon::harden::harden_process();
    let cli = drizzle::cli::Cli::parse();
    let settings = match drizzle::settings::Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("drizzle: {e:#}");
            std::process::exit(1);
        }
    };
    // Daemons log what they do; the terminal side of a background mount
    // (and every other command) only warnings: its messages are printed.
    let default = match cli.command {
        drizzle::cli::Cmd::Mount {
            foreground,
            daemon_child,
            ..
        } if foreground || daemon_child => "info",
        drizzle::cli::Cmd::Node { .. } => "info",
        _ => "warn",
    };
    drizzle::logging::init(settings.log.filter.as_deref(), default);
    if let Err(e) = drizzle::cli::run(cli, &settings) {
        eprintln!("drizzle: {e:#}");
        std::process::exit(1);
    }
}
