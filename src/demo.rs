//! `drizzle demo`: a throwaway vault mounted with sample files, for a first try.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rand::RngCore;

use crate::cli::{create_vault, human_bytes};
use crate::config::VaultConfig;
use crate::crypto::{KdfParams, VaultKeys};
use crate::vault::{Vault, VaultOptions};

pub fn run(dir: Option<PathBuf>, seconds: Option<u64>) -> anyhow::Result<()> {
    let mount_dir = dir.unwrap_or_else(|| PathBuf::from("drizzle-demo"));
    let created_mount_dir = !mount_dir.exists();
    std::fs::create_dir_all(&mount_dir)
        .with_context(|| format!("creating {}", mount_dir.display()))?;
    let mount_dir = mount_dir.canonicalize()?;
    let data = tempfile::Builder::new().prefix("drizzle-demo-").tempdir()?;
    let mut raw = [0u8; 12];
    rand::rng().fill_bytes(&mut raw);
    let password = format!(
        "demo-{}",
        raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );

    println!("drizzle demo");
    println!("  vault     demo (a throwaway vault; password: {password})");
    println!("  data dir  {} (sealed data only)", data.path().display());
    println!("  mount     {}", mount_dir.display());
    let kdf = KdfParams::default_strong();
    create_vault(data.path(), "demo", &password, kdf, 10, 16)?;
    let cfg = VaultConfig::load(data.path())?;
    let keys = VaultKeys::derive(password.as_bytes(), &cfg.vault, cfg.kdf)?;
    let vault = Vault::open(data.path(), "demo", keys, VaultOptions::default())?;

    let v2 = vault.clone();
    let md = mount_dir.clone();
    let dd = data.path().to_path_buf();
    let result = crate::daemon::run_mount(vault, data.path(), &mount_dir, move |r| {
        if let Err(e) = r {
            eprintln!("demo: mount failed: {e}");
            return;
        }
        std::thread::spawn(move || {
            if let Err(e) = show(&v2, &md, &dd, seconds) {
                eprintln!("demo: {e:#}");
            }
        });
    });
    if created_mount_dir {
        let _ = std::fs::remove_dir(&mount_dir);
    }
    println!("demo stopped; the throwaway vault is deleted");
    result
}

fn show(
    vault: &Arc<Vault>,
    mount: &Path,
    data_dir: &Path,
    seconds: Option<u64>,
) -> anyhow::Result<()> {
    std::fs::write(
        mount.join("README.txt"),
        "Hello from drizzle!\nEverything in this folder is encrypted before it touches the disk.\n",
    )?;
    std::fs::create_dir_all(mount.join("photos/2026"))?;
    let mut big = vec![0u8; 12 << 20];
    rand::rng().fill_bytes(&mut big);
    let mut f = std::fs::File::create(mount.join("photos/2026/large-random.bin"))?;
    f.write_all(&big)?;
    f.sync_all()?;
    std::os::unix::fs::symlink("photos/2026/large-random.bin", mount.join("latest"))?;
    let mut back = Vec::new();
    std::fs::File::open(mount.join("latest"))?.read_to_end(&mut back)?;
    anyhow::ensure!(back == big, "read-back of the sample file differs");
    vault.sync_all()?;
    let s = vault.stats()?;
    println!();
    println!("Wrote sample files and read 12 MiB back through the mount: identical.");
    println!(
        "  {} files, {} directories; {} of content stored as {} in {} sealed objects",
        s.files,
        s.dirs,
        human_bytes(s.logical_bytes),
        human_bytes(s.stored_bytes),
        s.objects
    );
    println!();
    println!("Try, in another terminal:");
    println!(
        "  ls -la {}            # an ordinary directory",
        mount.display()
    );
    println!("  cp -r /usr/share/doc/bash {}/", mount.display());
    println!("  drizzle status --data-dir {}", data_dir.display());
    println!(
        "  grep -r Hello {}     # nothing: the disk holds only sealed data",
        data_dir.display()
    );
    match seconds {
        Some(n) => {
            println!("The demo stops by itself in {n} s.");
            std::thread::sleep(Duration::from_secs(n));
            nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGINT)?;
        }
        None => println!("Press Ctrl-C to unmount and delete the demo vault."),
    }
    Ok(())
}
