//! The optional config file (TOML): every command-line option can be set
//! there; flags given on the command line win. `docs/drizzle.example.toml`
//! documents every key.
//!
//! Lookup: `--config FILE` (must exist), else the first existing of
//! `$XDG_CONFIG_HOME/drizzle/config.toml` (`~/.config/drizzle/config.toml`)
//! and `/etc/drizzle/config.toml`. Unknown keys and bad values are errors
//! naming the key and the file.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use serde::Deserialize;

/// Everything the config file may set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub data_dir: Option<PathBuf>,
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub network: NetworkSettings,
    #[serde(default)]
    pub init: InitSettings,
    #[serde(default)]
    pub mount: MountSettings,
    #[serde(default)]
    pub node: NodeSettings,
    #[serde(default)]
    pub log: LogSettings,
    /// Where the settings came from (for messages).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSettings {
    #[serde(default)]
    pub listen: Vec<String>,
    #[serde(default)]
    pub peers: Vec<String>,
    pub mdns: Option<bool>,
    /// Prometheus endpoint address (`--metrics`), e.g. "127.0.0.1:9464".
    pub metrics: Option<String>,
    /// What a peer may store here beyond what it gives (`--grace`).
    pub grace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitSettings {
    pub vault: Option<String>,
    pub k: Option<u32>,
    pub n: Option<u32>,
    pub kdf_memory: Option<String>,
    pub kdf_passes: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountSettings {
    pub vault: Option<String>,
    pub donate: Option<String>,
    pub cache: Option<String>,
    pub starter_allowance: Option<String>,
    pub foreground: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    pub donate: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// A `RUST_LOG`-style filter, e.g. "info" or "drizzle=debug,libp2p=warn".
    pub filter: Option<String>,
}

fn default_paths() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        v.push(PathBuf::from(d).join("drizzle/config.toml"));
    } else if let Some(h) = std::env::var_os("HOME") {
        v.push(PathBuf::from(h).join(".config/drizzle/config.toml"));
    }
    v.push(PathBuf::from("/etc/drizzle/config.toml"));
    v
}

impl Settings {
    /// Loads `explicit`, or the first default file that exists, or nothing.
    pub fn load(explicit: Option<&Path>) -> anyhow::Result<Settings> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => match default_paths().into_iter().find(|p| p.is_file()) {
                Some(p) => p,
                None => return Ok(Settings::default()),
            },
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text, &path)
    }

    /// Parses and checks a config file's text.
    pub fn parse(text: &str, path: &Path) -> anyhow::Result<Settings> {
        let mut s: Settings = toml::from_str(text).map_err(|e| {
            let key = e.message().to_string();
            anyhow!(
                "config file {}: {}{}",
                path.display(),
                key.trim(),
                e.span()
                    .map(|sp| format!(" (line {})", line_of(text, sp.start)))
                    .unwrap_or_default()
            )
        })?;
        s.source = Some(path.to_path_buf());
        s.validate()?;
        Ok(s)
    }

    fn bad(&self, key: &str, e: impl std::fmt::Display) -> anyhow::Error {
        let file = self
            .source
            .as_deref()
            .map_or_else(|| "config file".to_string(), |p| p.display().to_string());
        anyhow!("config file {file}: key `{key}`: {e}")
    }

    fn validate(&self) -> anyhow::Result<()> {
        use crate::units::parse_size;
        for (key, v) in [
            ("mount.cache", &self.mount.cache),
            ("mount.starter_allowance", &self.mount.starter_allowance),
            ("network.grace", &self.network.grace),
            ("init.kdf_memory", &self.init.kdf_memory),
        ] {
            if let Some(v) = v {
                parse_size(v).map_err(|e| self.bad(key, e))?;
            }
        }
        for (key, v) in [
            ("mount.donate", &self.mount.donate),
            ("node.donate", &self.node.donate),
        ] {
            if let Some(v) = v {
                let t = v.trim();
                let ok = match t.strip_suffix('%') {
                    Some(p) => p
                        .trim()
                        .parse::<f64>()
                        .is_ok_and(|p| (0.0..=100.0).contains(&p)),
                    None => parse_size(t).is_ok(),
                };
                if !ok {
                    return Err(self.bad(
                        key,
                        format!("'{v}' is not a size (e.g. 500G) or a percentage (e.g. 20%)"),
                    ));
                }
            }
        }
        for (key, list) in [
            ("network.listen", &self.network.listen),
            ("network.peers", &self.network.peers),
        ] {
            for a in list {
                a.parse::<crate::net::Multiaddr>()
                    .map_err(|e| self.bad(key, format!("'{a}': {e}")))?;
            }
        }
        if let (Some(k), Some(n)) = (self.init.k, self.init.n) {
            crate::config::validate_kn(k, n).map_err(|e| self.bad("init.k/init.n", e))?;
        }
        if let Some(f) = &self.log.filter {
            tracing_subscriber::EnvFilter::try_new(f).map_err(|e| self.bad("log.filter", e))?;
        }
        Ok(())
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let text = include_str!("../docs/drizzle.example.toml");
        let s = Settings::parse(text, Path::new("drizzle.example.toml")).unwrap();
        assert_eq!(s.node.donate.as_deref(), Some("20%"));
        assert_eq!(s.network.listen.len(), 2);
    }

    #[test]
    fn errors_name_the_key_and_the_file() {
        let p = Path::new("/etc/drizzle/config.toml");
        let cases = [
            ("[mount]\ncache = \"lots\"\n", "mount.cache"),
            ("[node]\ndonate = \"150%\"\n", "node.donate"),
            ("[network]\npeers = [\"not an address\"]\n", "network.peers"),
            ("[mount]\ncahce = \"1G\"\n", "cahce"),
            ("[init]\nk = 20\nn = 4\n", "init.k"),
            ("[init]\nk = \"ten\"\n", "line 2"),
            ("[log]\nfilter = \"drizzle=loud\"\n", "log.filter"),
        ];
        for (text, want) in cases {
            let e = format!("{:#}", Settings::parse(text, p).unwrap_err());
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.contains("/etc/drizzle/config.toml"), "{e}");
        }
    }
}
