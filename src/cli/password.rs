//! Password entry (`--password-file`, `DRIZZLE_PASSWORD`, a prompt), the
//! strength check at `init` and unlocking a vault's keys with it.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{bail, Context};
use zeroize::Zeroizing;

use crate::config::VaultConfig;
use crate::crypto::VaultKeys;

use super::args::Common;

/// Reads the password: DRIZZLE_PASSWORD, then --password-file, then a prompt.
pub(super) fn read_password(common: &Common, confirm: bool) -> anyhow::Result<Zeroizing<String>> {
    if let Some(f) = &common.password_file {
        let text = Zeroizing::new(
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read password file {}", f.display()))?,
        );
        let pw = text.trim_end_matches(['\n', '\r']);
        if pw.is_empty() {
            bail!("password file {} is empty", f.display());
        }
        return Ok(Zeroizing::new(pw.to_string()));
    }
    if let Ok(pw) = std::env::var("DRIZZLE_PASSWORD") {
        // Read once, then gone: no child process inherits it. (Read at
        // start, before any thread runs.)
        std::env::remove_var("DRIZZLE_PASSWORD");
        if !pw.is_empty() {
            return Ok(Zeroizing::new(pw));
        }
    }
    if !std::io::stdin().is_terminal() {
        bail!("no password given: set DRIZZLE_PASSWORD, pass --password-file FILE, or run in a terminal");
    }
    let pw = Zeroizing::new(
        rpassword::prompt_password("Vault password: ").context("reading the password")?,
    );
    if confirm {
        let again = Zeroizing::new(
            rpassword::prompt_password("Repeat password: ").context("reading the password")?,
        );
        if *pw != *again {
            bail!("the passwords do not match");
        }
    }
    if pw.is_empty() {
        bail!("the password is empty");
    }
    Ok(pw)
}

/// Loads the config and derives the keys, failing clearly on a wrong password.
pub(super) fn unlock(data_dir: &Path, password: &str) -> anyhow::Result<(VaultConfig, VaultKeys)> {
    let cfg = VaultConfig::load(data_dir)?;
    let keys = VaultKeys::derive(password.as_bytes(), &cfg.vault, cfg.kdf)?;
    if keys.key_check() != cfg.key_check {
        bail!("wrong password for vault '{}'", cfg.vault);
    }
    Ok((cfg, keys))
}

/// Refuses passwords below zxcvbn score 3 unless allowed, offering a
/// generated passphrase. The vault name is the key derivation's salt and
/// root records are spread to every peer, so a weak password can be
/// guessed offline by anyone who knows or guesses the name.
pub(super) fn check_strength(password: &str, name: &str, allow_weak: bool) -> anyhow::Result<()> {
    let est = zxcvbn::zxcvbn(password, &[name, "drizzle"]);
    let score = est.score() as u8;
    let hint = est
        .feedback()
        .and_then(|f| f.warning().map(|w| w.to_string()))
        .unwrap_or_default();
    if score < 3 && !allow_weak {
        bail!(
            "the password is too weak (strength {score}/4, 3 needed{}): anyone who knows the vault's name \
             can test guesses offline against its published root record. Use a longer passphrase, for \
             example this one made just now: {}\n(or pass --allow-weak-password)",
            if hint.is_empty() { String::new() } else { format!("; {hint}") },
            suggest_passphrase()
        );
    }
    Ok(())
}

/// A pronounceable passphrase of six three-syllable words (about 120 bits:
/// 20 consonants x 5 vowels per syllable, 18 syllables).
pub fn suggest_passphrase() -> String {
    use rand::Rng;
    const C: &[u8] = b"bcdfghjklmnprstvwxyz";
    const V: &[u8] = b"aeiou";
    let mut rng = rand::rng();
    let word = |rng: &mut rand::rngs::ThreadRng| -> String {
        (0..3)
            .flat_map(|_| {
                [
                    C[rng.random_range(0..C.len())] as char,
                    V[rng.random_range(0..V.len())] as char,
                ]
            })
            .collect()
    };
    (0..6).map(|_| word(&mut rng)).collect::<Vec<_>>().join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_passwords_are_refused() {
        assert!(check_strength("password", "v", false).is_err());
        assert!(check_strength("password", "v", true).is_ok());
        assert!(check_strength("correct horse battery staple 9431!", "v", false).is_ok());
        // Moderate is not enough: the error offers a passphrase that passes.
        let err = check_strength("Summer2024!", "v", false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("made just now"), "{err}");
        let offered = err
            .split("made just now: ")
            .nth(1)
            .unwrap()
            .lines()
            .next()
            .unwrap();
        assert_eq!(offered.len(), 6 * 6 + 5, "{offered}");
        assert!(check_strength(offered, "v", false).is_ok(), "{offered}");
    }
}
