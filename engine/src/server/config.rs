//! `mykeyd`'s configuration: a TOML file, overridden by `MYKEYD_<SECTION>_<KEY>` environment
//! variables, checked whole before anything starts (`mykeyd serve --check-config`).
//!
//! Owns the config format and its defaults. An unknown key, a wrong type or an unreadable file
//! is refused with the key and the reason; nothing is half-applied. Relative paths are taken
//! from the config file's directory. Never opens sockets or the store itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "MYKEYD_";

/// The whole configuration.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listening addresses.
    pub server: ServerSection,
    /// The store.
    pub store: StoreSection,
    /// TLS material of the QUIC endpoint.
    pub tls: TlsSection,
    /// JPKI trust.
    pub jpki: JpkiSection,
    /// Limits.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Logging.
    #[serde(default)]
    pub log: LogSection,
}

/// `[server]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// The QUIC (UDP) address.
    pub listen: SocketAddr,
    /// The admin HTTP address (`/metrics`, `/livez`, `/readyz`); keep it on loopback.
    #[serde(default = "default_admin")]
    pub admin_listen: SocketAddr,
}

fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}

/// `[store]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// The store directory.
    pub dir: PathBuf,
    /// Compact when the delta holds this many keys.
    #[serde(default = "default_compact_keys")]
    pub compact_delta_keys: usize,
}

fn default_compact_keys() -> usize {
    1_000_000
}

/// `[tls]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The server certificate chain, PEM.
    pub cert: PathBuf,
    /// The server's private key, PEM (PKCS#8).
    pub key: PathBuf,
    /// The operator's client CA certificates, PEM.
    pub client_ca: PathBuf,
    /// CRLs of the client CA, PEM or DER; reloaded on SIGHUP.
    #[serde(default)]
    pub client_crl: Option<PathBuf>,
}

/// `[jpki]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JpkiSection {
    /// The directory of JPKI user-authentication CA certificates.
    pub anchors: PathBuf,
    /// Verified certificates kept in the cache.
    #[serde(default = "default_leaf_cache")]
    pub leaf_cache_entries: usize,
    /// Seconds a challenge stays usable.
    #[serde(default = "default_challenge_ttl")]
    pub challenge_ttl_secs: u32,
}

fn default_leaf_cache() -> usize {
    crate::jpki::JpkiConfig::default().leaf_cache_entries
}

fn default_challenge_ttl() -> u32 {
    crate::jpki::challenge::CHALLENGE_TTL_SECS
}

/// `[limits]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Connections served at once.
    pub connections_max: usize,
    /// Requests executed at once, over all connections.
    pub in_flight_max: usize,
    /// Requests per second per client certificate (0: no limit).
    pub rate_per_identity: u32,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            connections_max: super::CONNECTIONS_MAX,
            in_flight_max: super::IN_FLIGHT_MAX,
            rate_per_identity: super::RATE_PER_IDENTITY,
        }
    }
}

/// `[log]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `text` or `json`.
    pub format: LogFormat,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// How logs are written.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file or an override is not valid (unknown key, wrong type, missing key).
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
}

impl Config {
    /// Reads `path`, applies the environment's overrides, and resolves relative paths against
    /// the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text, std::env::vars())
    }

    /// Parses `text` (read from `path`) with the given environment.
    pub fn parse(
        path: &Path,
        text: &str,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| invalid(e.to_string()))?;
        for (k, v) in env {
            let Some(rest) = k.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let rest = rest.to_ascii_lowercase();
            let (section, key) = rest
                .split_once('_')
                .ok_or_else(|| invalid(format!("{k}: expected {ENV_PREFIX}<SECTION>_<KEY>")))?;
            // A value that parses as a TOML integer or boolean is one; anything else is text.
            let value = match format!("v = {v}").parse::<toml::Table>() {
                Ok(mut t) if !matches!(t.get("v"), Some(toml::Value::Table(_))) => {
                    t.remove("v").unwrap_or(toml::Value::String(v.clone()))
                }
                _ => toml::Value::String(v.clone()),
            };
            let sect = table
                .entry(section.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match sect {
                toml::Value::Table(t) => {
                    t.insert(key.to_owned(), value);
                }
                _ => return Err(invalid(format!("{k}: [{section}] is not a section"))),
            }
        }
        let mut cfg: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| invalid(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut cfg.store.dir,
            &mut cfg.tls.cert,
            &mut cfg.tls.key,
            &mut cfg.tls.client_ca,
            &mut cfg.jpki.anchors,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(p) = &mut cfg.tls.client_crl
            && p.is_relative()
        {
            *p = base.join(&*p);
        }
        if !matches!(
            cfg.log.level.as_str(),
            "error" | "warn" | "info" | "debug" | "trace"
        ) {
            return Err(invalid(format!(
                "log.level {:?}: expected error, warn, info, debug or trace",
                cfg.log.level
            )));
        }
        Ok(cfg)
    }
}

/// The configuration `mykeyd init` writes, with every option and what it means.
pub fn example(listen: SocketAddr, admin: SocketAddr) -> String {
    format!(
        r#"# mykeyd configuration. Relative paths are taken from this file's directory.
# Any key can be overridden by an environment variable MYKEYD_<SECTION>_<KEY>,
# for example MYKEYD_SERVER_LISTEN=0.0.0.0:4433 or MYKEYD_LOG_FORMAT=json.

[server]
# QUIC (UDP) address the terminals, portal, municipal counters and partners connect to.
listen = "{listen}"
# Admin HTTP: /metrics (Prometheus), /livez, /readyz. Keep it on loopback.
admin_listen = "{admin}"

[store]
# The store directory (created by `mykeyd snapshot build` or `mykeyd init`).
dir = "store"
# Fold the write-ahead log into new snapshots once the delta holds this many keys.
compact_delta_keys = 1000000

[tls]
# The server's certificate chain and key (PEM). Reloaded on SIGHUP.
cert = "pki/server.pem"
key = "pki/server.key"
# The operator's client CA: every client certificate must chain to it.
client_ca = "pki/client-ca.pem"
# The client CA's CRL (PEM or DER). Reloaded on SIGHUP; a revoked terminal is refused.
client_crl = "pki/client-ca.crl"

[jpki]
# JPKI user-authentication CA certificates (PEM or DER); the signature CA is refused.
anchors = "jpki-anchors"
# Verified card certificates kept in memory (a repeat visit skips the chain check).
leaf_cache_entries = 65536
# Seconds a challenge stays usable.
challenge_ttl_secs = 120

[limits]
# Connections served at once; more are refused at the handshake.
connections_max = 20000
# Requests executed at once over all connections; more are answered BUSY.
in_flight_max = 4096
# Requests per second one client certificate may make (all its connections together), with a
# burst of one second's worth; more are answered RATE_LIMITED. 0 turns the limit off.
rate_per_identity = 5000

[log]
# text or json.
format = "text"
# error, warn, info, debug or trace.
level = "info"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::parse(
            Path::new("/etc/mykey/mykeyd.toml"),
            text,
            env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
    }

    fn example_text() -> String {
        example(
            "127.0.0.1:4433".parse().expect("addr"),
            "127.0.0.1:9464".parse().expect("addr"),
        )
    }

    #[test]
    fn the_example_parses_and_paths_are_resolved() {
        let c = parse(&example_text(), &[]).expect("example parses");
        assert_eq!(c.store.dir, PathBuf::from("/etc/mykey/store"));
        assert_eq!(c.jpki.challenge_ttl_secs, 120);
        assert_eq!(c.log.format, LogFormat::Text);
    }

    /// `ops/mykeyd.toml`, the production example, parses, and names every option (a key
    /// renamed in the code fails the parse; one added must be added to this list and to the
    /// file).
    #[test]
    fn the_production_example_parses_and_names_every_option() {
        let text = include_str!("../../../ops/mykeyd.toml");
        let c = parse(text, &[]).expect("ops/mykeyd.toml parses");
        assert_eq!(c.store.dir, PathBuf::from("/var/lib/mykeyd/store"));
        assert_eq!(c.tls.cert, PathBuf::from("/etc/mykey/tls/server.pem"));
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.limits, LimitsSection::default());
        let table: toml::Table = text.parse().expect("toml");
        for (section, keys) in [
            ("server", &["listen", "admin_listen"][..]),
            ("store", &["dir", "compact_delta_keys"]),
            ("tls", &["cert", "key", "client_ca", "client_crl"]),
            (
                "jpki",
                &["anchors", "leaf_cache_entries", "challenge_ttl_secs"],
            ),
            (
                "limits",
                &["connections_max", "in_flight_max", "rate_per_identity"],
            ),
            ("log", &["format", "level"]),
        ] {
            let t = table[section].as_table().expect("section");
            for k in keys {
                assert!(t.contains_key(*k), "ops/mykeyd.toml lacks {section}.{k}");
            }
            assert_eq!(
                t.len(),
                keys.len(),
                "[{section}] has keys this test does not know"
            );
        }
    }

    #[test]
    fn environment_overrides_the_file() {
        let c = parse(
            &example_text(),
            &[
                ("MYKEYD_SERVER_LISTEN", "0.0.0.0:5000"),
                ("MYKEYD_LOG_FORMAT", "json"),
                ("MYKEYD_LIMITS_IN_FLIGHT_MAX", "17"),
                ("OTHER", "x"),
            ],
        )
        .expect("overrides");
        assert_eq!(c.server.listen, "0.0.0.0:5000".parse().expect("addr"));
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.limits.in_flight_max, 17);
    }

    #[test]
    fn bad_configs_name_the_key() {
        let unknown = example_text().replace("[limits]", "[limits]\nconections_max = 5");
        let e = parse(&unknown, &[]).expect_err("unknown key").to_string();
        assert!(e.contains("conections_max"), "{e}");
        let wrong = example_text().replace("in_flight_max = 4096", "in_flight_max = \"many\"");
        let e = parse(&wrong, &[]).expect_err("wrong type").to_string();
        assert!(e.contains("in_flight_max"), "{e}");
        let e = parse(&example_text(), &[("MYKEYD_LOG_LEVEL", "loud")])
            .expect_err("bad level")
            .to_string();
        assert!(e.contains("log.level"), "{e}");
        let e = parse(&example_text(), &[("MYKEYD_SERVER_LISTN", "x")])
            .expect_err("unknown override")
            .to_string();
        assert!(e.contains("listn"), "{e}");
        assert!(parse("[server", &[]).is_err());
    }
}
