//! Renders what the engine reports (recovery and update events) for a
//! person at a terminal: one line per step on stderr, a progress line
//! redrawn in place while metadata is fetched (on a terminal only).

use std::io::{IsTerminal, Write};

use crate::metasync::describe_time;
use crate::recover::Event;
use crate::units::human_bytes;

/// Draws recovery events on stderr.
pub(super) struct Progress {
    bar: bool,
    drawing: bool,
}

impl Progress {
    pub(super) fn new() -> Self {
        Progress {
            bar: std::io::stderr().is_terminal(),
            drawing: false,
        }
    }

    /// Renders one event.
    pub(super) fn show(&mut self, e: Event) {
        if let Event::Fetched {
            objects,
            total,
            bytes,
        } = e
        {
            if self.bar {
                eprint!(
                    "\r  {objects} of {total} metadata objects, {}   ",
                    human_bytes(bytes)
                );
                let _ = std::io::stderr().flush();
                self.drawing = true;
            }
            return;
        }
        if self.drawing {
            eprintln!();
            self.drawing = false;
        }
        eprintln!("{}", line(&e));
    }
}

/// The sentence for an event (not `Fetched`, which is a progress line).
fn line(e: &Event) -> String {
    match e {
        Event::Recovering { name } => {
            format!("recovering vault '{name}' from the network (deriving keys)...")
        }
        Event::Found {
            name,
            seq,
            published,
        } => format!(
            "found vault '{name}' (version {seq}, published {}); fetching its metadata...",
            describe_time(*published)
        ),
        Event::Fetched { objects, .. } => format!("{objects} metadata objects fetched"),
        Event::Recovered {
            name,
            bytes,
            objects,
            secs,
        } => format!(
            "recovered vault '{name}': {} of metadata in {objects} objects, {secs:.1} s; \
             file contents are fetched when read",
            human_bytes(*bytes)
        ),
        Event::SeparateVault { name, published } => format!(
            "warning: a vault named '{name}' with this password already exists on the network \
             (published {}), but this data dir holds a separate vault created here; it will \
             not be published. To use the existing vault, mount it on an empty data dir with \
             --vault '{name}'",
            describe_time(*published)
        ),
        Event::Diverged {
            name,
            published,
            pending,
        } => format!(
            "warning: another device published a different version of vault '{name}' ({}); \
             this device keeps its own{}. The next sync from here replaces the other \
             version (last synced wins)",
            describe_time(*published),
            if *pending {
                " and its unsynced changes"
            } else {
                ""
            }
        ),
        Event::TakingUp { name, published } => format!(
            "taking up the newer version of vault '{name}' another device published {}...",
            describe_time(*published)
        ),
        Event::Updated { seq, bytes } => format!(
            "updated to version {seq} ({} of metadata)",
            human_bytes(*bytes)
        ),
        Event::Unchecked { name } => format!(
            "warning: no peer was reachable, so drizzle could not check whether vault '{name}' \
             already exists"
        ),
    }
}
