//! The vault config file (`vault.json` in the data dir): what must be known
//! before the password unlocks anything. Holds no secret.
//!
//! Architecture invariant: no runtime state, no keys; only the schema,
//! defaults and validation.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::crypto::KdfParams;

pub const CONFIG_FILE: &str = "vault.json";
pub const FORMAT_VERSION: u32 = 1;

/// Errors reading or writing the config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not a drizzle vault (no {CONFIG_FILE}); create one with `drizzle init --vault NAME`")]
    NotAVault(PathBuf),
    #[error("a vault already exists in {0}")]
    Exists(PathBuf),
    #[error("bad vault config {path}: {msg}")]
    Bad { path: PathBuf, msg: String },
    #[error("cannot write {path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
}

/// The vault's clear-text settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VaultConfig {
    /// Format version of the vault as a whole.
    pub format: u32,
    /// Vault name (with the password, it determines the keys).
    pub vault: String,
    /// Argon2id parameters.
    pub kdf: KdfParams,
    /// Tells a wrong password at once (keyed hash under a derived key).
    pub key_check: String,
    /// Fragments needed to rebuild an object (used once the network lands).
    pub k: u32,
    /// Fragments made per object.
    pub n: u32,
}

impl VaultConfig {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(CONFIG_FILE)
    }

    pub fn load(data_dir: &Path) -> Result<Self, ConfigError> {
        let path = Self::path(data_dir);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::NotAVault(data_dir.to_path_buf()))
            }
            Err(e) => {
                return Err(ConfigError::Bad {
                    path,
                    msg: e.to_string(),
                })
            }
        };
        let cfg: VaultConfig = serde_json::from_str(&text).map_err(|e| ConfigError::Bad {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        let bad = |msg: String| ConfigError::Bad {
            path: path.clone(),
            msg,
        };
        if cfg.format != FORMAT_VERSION {
            return Err(bad(format!(
                "format {} is not supported (expected {FORMAT_VERSION})",
                cfg.format
            )));
        }
        cfg.kdf.validate().map_err(|e| bad(format!("kdf: {e}")))?;
        validate_name(&cfg.vault).map_err(|e| bad(format!("vault: {e}")))?;
        validate_kn(cfg.k, cfg.n).map_err(bad)?;
        Ok(cfg)
    }

    /// Writes the config durably; refuses to overwrite an existing vault.
    pub fn create(&self, data_dir: &Path) -> Result<(), ConfigError> {
        let path = Self::path(data_dir);
        let io = |err| ConfigError::Io {
            path: path.clone(),
            err,
        };
        fs::create_dir_all(data_dir).map_err(io)?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    ConfigError::Exists(data_dir.to_path_buf())
                } else {
                    ConfigError::Io {
                        path: path.clone(),
                        err: e,
                    }
                }
            })?;
        let text = serde_json::to_string_pretty(self).expect("config serializes");
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(())
    }
}

pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err("a vault name has 1 to 128 characters".into());
    }
    if name.chars().any(|c| c.is_control()) {
        return Err("a vault name has no control characters".into());
    }
    Ok(())
}

pub fn validate_kn(k: u32, n: u32) -> Result<(), String> {
    if k == 0 || n < k || n > 255 {
        return Err(format!("need 1 <= k <= n <= 255, got k={k} n={n}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VaultConfig {
        VaultConfig {
            format: FORMAT_VERSION,
            vault: "v".into(),
            kdf: KdfParams::default_strong(),
            key_check: "00".into(),
            k: 10,
            n: 16,
        }
    }

    #[test]
    fn roundtrip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            VaultConfig::load(dir.path()),
            Err(ConfigError::NotAVault(_))
        ));
        sample().create(dir.path()).unwrap();
        assert_eq!(VaultConfig::load(dir.path()).unwrap(), sample());
        assert!(matches!(
            sample().create(dir.path()),
            Err(ConfigError::Exists(_))
        ));
    }

    #[test]
    fn bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = sample();
        c.kdf.m_kib = 8;
        fs::write(
            VaultConfig::path(dir.path()),
            serde_json::to_string(&c).unwrap(),
        )
        .unwrap();
        let e = VaultConfig::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("kdf") && e.contains("memory"), "{e}");
        fs::write(VaultConfig::path(dir.path()), "{not json").unwrap();
        assert!(matches!(
            VaultConfig::load(dir.path()),
            Err(ConfigError::Bad { .. })
        ));
    }
}
