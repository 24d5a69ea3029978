//! `mykeyd`'s configuration: a TOML file, overridden by `MYKEYD_<SECTION>_<KEY>` environment
//! variables, checked whole before anything starts (`mykeyd serve --check-config`).
//!
//! Owns the config format and its defaults. An unknown key, a wrong type or an unreadable file
//! is refused with the key and the reason; nothing is half-applied. Relative paths are taken
//! from the config file's directory. Never opens sockets or the store itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "MYKEYD_";

/// Every section and its keys, as the file may name them. An environment variable
/// `MYKEYD_<SECTION>_<KEY>` whose section is here must name one of its keys (anything else is
/// a typo, refused); one whose section is not here is someone else's variable that happens to
/// share the prefix (a script's `MYKEYD_BIN`, the `MYKEYD_PORT`, `MYKEYD_SERVICE_HOST` that
/// Kubernetes injects for a Service named `mykeyd`) and is ignored with a warning.
pub const SECTIONS: [(&str, &[&str]); 8] = [
    (
        "server",
        &["listen", "admin_listen", "endpoints", "worker_threads"],
    ),
    ("store", &["dir", "compact_delta_keys"]),
    ("tls", &["cert", "key", "client_ca", "client_crl"]),
    (
        "jpki",
        &["anchors", "leaf_cache_entries", "challenge_ttl_secs"],
    ),
    (
        "limits",
        &[
            "connections_max",
            "in_flight_max",
            "writes_in_flight_max",
            "write_timeout",
            "rate_per_identity",
            "handshakes_per_second",
        ],
    ),
    (
        "registry",
        &[
            "provisional_expiry_days",
            "revocation_changes_per_hold",
            "record_encoding",
        ],
    ),
    ("log", &["format", "level"]),
    (
        "cluster",
        &[
            "node",
            "pg",
            "tail_pg",
            "pg_ca",
            "advertise",
            "node_cert",
            "node_key",
            "server_name",
        ],
    ),
];

/// Most runtime worker threads `server.worker_threads` may ask for.
pub const WORKER_THREADS_MAX: usize = 1024;
/// Most bytes of a cluster node's name (it is stored in `head.writer` and logged).
pub const NODE_NAME_MAX: usize = 63;

/// The range of `provisional_expiry_days`: DESIGN §3's default is 30; a year is the longest a
/// chosen ID may be held without the card being shown at a counter.
pub const PROVISIONAL_EXPIRY_DAYS_RANGE: (u32, u32) = (1, 365);
/// Most changes `registry.revocation_changes_per_hold` may ask for: enough for the longest
/// CRL (`CRL_ENTRIES_MAX`) in one hold, past which a bigger hold means nothing.
pub const REVOCATION_CHANGES_PER_HOLD_MAX: usize =
    crate::jpki::crl::CRL_ENTRIES_MAX.div_ceil(crate::registry::REVOCATIONS_PER_CHANGE_MAX);

/// Most keys a delta may be allowed to hold before a compaction: a key costs ~100 bytes of
/// memory, so 100 million is ~10 GB, past what a node should hold outside its snapshots.
pub const COMPACT_DELTA_KEYS_MAX: usize = 100_000_000;
/// Most connections a node may be configured for: 5× the 20,000 default, past which the
/// ~60 KB each costs the server exceeds a node's memory budget.
pub const CONNECTIONS_MAX_MAX: usize = 100_000;
/// Most reads in flight: a 16× headroom over the default.
pub const IN_FLIGHT_MAX_MAX: usize = 65_536;
/// Most writes in flight: three quarters of tokio's 512 blocking threads, so that card
/// lookups keep threads of their own even with every write stuck on a disk.
pub const WRITES_IN_FLIGHT_MAX_MAX: usize = 384;
/// Most handshakes per second a node may be configured to accept: past what two cores can
/// complete, so a higher value would only mean no limit.
pub const HANDSHAKES_PER_SECOND_MAX: u32 = 100_000;
/// Most requests per second per certificate (0 turns the limit off).
pub const RATE_PER_IDENTITY_MAX: u32 = 1_000_000;
/// The range of `write_timeout`: below 100 ms a busy disk's fsync would time out; above
/// 25 s a stuck write would outlast the drain grace (30 s).
pub const WRITE_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(25));
/// Most verified card certificates cached.
pub const LEAF_CACHE_ENTRIES_MAX: usize = 16_777_216;
/// The range of `challenge_ttl_secs`: long enough for a card reader's PIN entry, short
/// enough that a leaked challenge is soon useless.
pub const CHALLENGE_TTL_RANGE: (u32, u32) = (10, 3600);

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
    /// Domain settings.
    #[serde(default)]
    pub registry: RegistrySection,
    /// Logging.
    #[serde(default)]
    pub log: LogSection,
    /// Cluster membership (`engine/CLUSTER.md`); absent: a single node, its local log the
    /// system of record.
    #[serde(default)]
    pub cluster: Option<ClusterSection>,
    /// Environment variables with the `MYKEYD_` prefix that name no section and were ignored,
    /// each with why: the caller logs them once logging is set up.
    #[serde(skip)]
    pub ignored_env: Vec<String>,
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
    /// QUIC endpoints sharing the `listen` port (`SO_REUSEPORT`), each with its own
    /// datagram task, so that the datagram path runs on up to this many cores.
    #[serde(default = "default_endpoints")]
    pub endpoints: usize,
    /// Threads of the runtime that serves QUIC (tokio's workers); 0: one per core.
    #[serde(default)]
    pub worker_threads: usize,
}

fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}

fn default_endpoints() -> usize {
    1
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
    /// Reads executed at once, over all connections.
    pub in_flight_max: usize,
    /// Writes executed at once (their own budget).
    pub writes_in_flight_max: usize,
    /// How long a write may wait for its fsync: `"5s"`, `"500ms"`.
    #[serde(deserialize_with = "duration")]
    pub write_timeout: Duration,
    /// Requests per second per client certificate (0: no limit).
    pub rate_per_identity: u32,
    /// New connections accepted per second.
    pub handshakes_per_second: u32,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            connections_max: super::CONNECTIONS_MAX,
            in_flight_max: super::IN_FLIGHT_MAX,
            writes_in_flight_max: super::WRITES_IN_FLIGHT_MAX,
            write_timeout: super::WRITE_TIMEOUT,
            rate_per_identity: super::RATE_PER_IDENTITY,
            handshakes_per_second: super::HANDSHAKES_PER_SECOND,
        }
    }
}

/// Reads a duration written as a whole number of `ms` or `s`: `"5s"`, `"250ms"`.
fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration: write a whole number of ms or s, such as \"5s\" or \"500ms\""
        ))
    })
}

fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let (num, unit_ms) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000)
    } else {
        return None;
    };
    let n: u64 = num.trim().parse().ok()?;
    Some(Duration::from_millis(n.checked_mul(unit_ms)?))
}

/// `[registry]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySection {
    /// Days an unconfirmed provisional registration lives before its ID is freed.
    pub provisional_expiry_days: u32,
    /// Changes of up to 4,096 revocations a push makes durable together while other writes
    /// wait (`RegistryConfig::revocation_changes_per_hold`).
    pub revocation_changes_per_hold: usize,
    /// The encoding of the ID records this node writes: 2, or 1 while a cluster still has
    /// nodes of a build before 2026-12-04 (they read only encoding 1).
    pub record_encoding: usize,
}

impl Default for RegistrySection {
    fn default() -> Self {
        Self {
            provisional_expiry_days: (crate::registry::PROVISIONAL_EXPIRY_SECS_DEFAULT / 86_400)
                as u32,
            revocation_changes_per_hold: crate::registry::REVOCATION_CHANGES_PER_HOLD_DEFAULT,
            record_encoding: 2,
        }
    }
}

impl RegistrySection {
    /// The registry's configuration.
    pub fn registry_config(&self) -> crate::registry::RegistryConfig {
        crate::registry::RegistryConfig {
            provisional_expiry_secs: u64::from(self.provisional_expiry_days) * 86_400,
            revocation_changes_per_hold: self.revocation_changes_per_hold,
            // The range check lets only 1 and 2 through.
            record_encoding: if self.record_encoding == 1 {
                crate::registry::RecordEncoding::V1
            } else {
                crate::registry::RecordEncoding::V2
            },
        }
    }
}

/// `[cluster]`: this node is one of several sharing PostgreSQL as the system of record.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// This node's name, unique in the cluster: 1 to [`NODE_NAME_MAX`] bytes of A–Z, a–z,
    /// 0–9, `.`, `_`, `-`.
    pub node: String,
    /// The PostgreSQL primary (a libpq connection string or URL): the writer commits there and
    /// every node takes part in the election there.
    pub pg: String,
    /// The PostgreSQL this node tails (the primary or a hot standby); absent: `pg`.
    #[serde(default)]
    pub tail_pg: Option<String>,
    /// CA certificates (PEM) that PostgreSQL's server certificate must chain to; present: TLS
    /// 1.3 to PostgreSQL, absent: no TLS (a database on loopback only).
    #[serde(default)]
    pub pg_ca: Option<PathBuf>,
    /// The QUIC address other nodes reach this one at while it is the writer, to forward
    /// writes to (stored in `head.writer_addr`); absent: `server.listen`, unless that is an
    /// unspecified address (0.0.0.0, ::), in which case this node takes no forwarded writes.
    #[serde(default)]
    pub advertise: Option<SocketAddr>,
    /// This node's client certificate (PEM) with the role `node`, to forward the writes it is
    /// sent as a follower to the writer; absent: a follower answers writes `NO_WRITER`.
    #[serde(default)]
    pub node_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(default)]
    pub node_key: Option<PathBuf>,
    /// The name the writer's server certificate carries, checked when forwarding (the roots
    /// are `tls.client_ca`: the operator CA issues both). Default `localhost`.
    #[serde(default = "default_server_name")]
    pub server_name: String,
}

fn default_server_name() -> String {
    "localhost".to_owned()
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
        let file: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| invalid(e.to_string()))?;
        let mut env: Vec<(String, String)> = env.collect();
        env.sort();
        let mut ignored = Vec::new();
        // (section, key) → (variable, value) of every override that names a key of ours.
        let mut overrides: BTreeMap<(String, String), (String, toml::Value)> = BTreeMap::new();
        for (k, v) in env {
            let Some(rest) = k.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let rest = rest.to_ascii_lowercase();
            let known = rest.split_once('_').and_then(|(section, key)| {
                SECTIONS
                    .iter()
                    .find(|(s, _)| *s == section)
                    .map(|(s, keys)| (*s, key, *keys))
            });
            let Some((section, key, keys)) = known else {
                ignored.push(format!(
                    "{k}: ignored: it names no section of mykeyd.toml ({}), so it is not an override",
                    SECTIONS.map(|(s, _)| s).join(", ")
                ));
                continue;
            };
            if !keys.contains(&key) {
                return Err(invalid(format!(
                    "environment variable {k}: [{section}] has no key {key:?} (its keys: {}); fix the name or unset it",
                    keys.join(", ")
                )));
            }
            // A value that parses as a TOML integer or boolean is one; anything else is text.
            let value = match format!("v = {v}").parse::<toml::Table>() {
                Ok(mut t) if !matches!(t.get("v"), Some(toml::Value::Table(_))) => {
                    t.remove("v").unwrap_or(toml::Value::String(v.clone()))
                }
                _ => toml::Value::String(v.clone()),
            };
            overrides.insert((section.to_owned(), key.to_owned()), (k, value));
        }
        let merged = |only: Option<&(String, String)>| -> Result<toml::Table, ConfigError> {
            let mut table = file.clone();
            for ((section, key), (var, value)) in &overrides {
                if only.is_some_and(|o| o != &(section.clone(), key.clone())) {
                    continue;
                }
                let sect = table
                    .entry(section.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                match sect {
                    toml::Value::Table(t) => {
                        t.insert(key.clone(), value.clone());
                    }
                    _ => return Err(invalid(format!("{var}: [{section}] is not a section"))),
                }
            }
            Ok(table)
        };
        let mut cfg: Config = match merged(None)?.try_into() {
            Ok(c) => c,
            Err(e) => {
                let e: toml::de::Error = e;
                // Name the variable when an override is what does not parse.
                for (k, (var, _)) in &overrides {
                    let alone: Result<Config, _> = merged(Some(k))?.try_into();
                    let file_alone: Result<Config, _> = file.clone().try_into();
                    if let (Err(oe), true) = (alone, file_alone.is_ok()) {
                        let oe: toml::de::Error = oe;
                        return Err(invalid(format!(
                            "environment variable {var} (overriding {}.{}): {}",
                            k.0,
                            k.1,
                            oe.message()
                        )));
                    }
                }
                return Err(invalid(e.to_string()));
            }
        };
        cfg.ignored_env = ignored;
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
        let cluster_paths = cfg
            .cluster
            .as_mut()
            .map(|c| [c.pg_ca.as_mut(), c.node_cert.as_mut(), c.node_key.as_mut()])
            .into_iter()
            .flatten();
        for p in std::iter::once(cfg.tls.client_crl.as_mut())
            .chain(cluster_paths)
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        let origins: BTreeMap<(String, String), String> = overrides
            .into_iter()
            .map(|(k, (var, _))| (k, var))
            .collect();
        cfg.validate(&origins).map_err(invalid)?;
        Ok(cfg)
    }

    /// Checks every value against its range; the message names the key, or the environment
    /// variable it came from, and the valid range.
    fn validate(&self, origins: &BTreeMap<(String, String), String>) -> Result<(), String> {
        let name =
            |section: &str, key: &str| match origins.get(&(section.to_owned(), key.to_owned())) {
                Some(var) => format!("{section}.{key} (from environment variable {var})"),
                None => format!("{section}.{key}"),
            };
        let range = |section: &str, key: &str, v: usize, lo: usize, hi: usize| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!(
                    "{} = {v} is out of range: it must be {lo}..={hi}",
                    name(section, key)
                ))
            }
        };
        let l = &self.limits;
        if l.rate_per_identity > RATE_PER_IDENTITY_MAX {
            return Err(format!(
                "{} = {} is out of range: it must be 0 (no limit) or 1..={RATE_PER_IDENTITY_MAX}",
                name("limits", "rate_per_identity"),
                l.rate_per_identity
            ));
        }
        let (lo, hi) = WRITE_TIMEOUT_RANGE;
        if l.write_timeout < lo || l.write_timeout > hi {
            return Err(format!(
                "{} = {} ms is out of range: it must be {} ms..={} s",
                name("limits", "write_timeout"),
                l.write_timeout.as_millis(),
                lo.as_millis(),
                hi.as_secs()
            ));
        }
        let u = |n: u32| n as usize;
        let (ttl, days) = (CHALLENGE_TTL_RANGE, PROVISIONAL_EXPIRY_DAYS_RANGE);
        #[rustfmt::skip]
        let ranges = [
            ("server", "endpoints", self.server.endpoints, 1, super::ENDPOINTS_MAX),
            ("server", "worker_threads", self.server.worker_threads, 0, WORKER_THREADS_MAX),
            ("store", "compact_delta_keys", self.store.compact_delta_keys, 1, COMPACT_DELTA_KEYS_MAX),
            ("limits", "connections_max", l.connections_max, 1, CONNECTIONS_MAX_MAX),
            ("limits", "in_flight_max", l.in_flight_max, 1, IN_FLIGHT_MAX_MAX),
            ("limits", "writes_in_flight_max", l.writes_in_flight_max, 1, WRITES_IN_FLIGHT_MAX_MAX),
            ("limits", "handshakes_per_second", u(l.handshakes_per_second), 1, u(HANDSHAKES_PER_SECOND_MAX)),
            ("jpki", "leaf_cache_entries", self.jpki.leaf_cache_entries, 1, LEAF_CACHE_ENTRIES_MAX),
            ("jpki", "challenge_ttl_secs", u(self.jpki.challenge_ttl_secs), u(ttl.0), u(ttl.1)),
            ("registry", "provisional_expiry_days", u(self.registry.provisional_expiry_days), u(days.0), u(days.1)),
            ("registry", "revocation_changes_per_hold", self.registry.revocation_changes_per_hold, 1, REVOCATION_CHANGES_PER_HOLD_MAX),
            ("registry", "record_encoding", self.registry.record_encoding, 1, 2),
        ];
        for (section, key, v, lo, hi) in ranges {
            range(section, key, v, lo, hi)?;
        }
        if let Some(c) = &self.cluster {
            let ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
            if c.node.is_empty() || c.node.len() > NODE_NAME_MAX || !c.node.bytes().all(ok) {
                return Err(format!(
                    "{} {:?}: a node name is 1..={NODE_NAME_MAX} bytes of A-Z, a-z, 0-9, '.', '_', '-'",
                    name("cluster", "node"),
                    c.node
                ));
            }
            if c.node_cert.is_some() != c.node_key.is_some() {
                return Err(format!(
                    "{} and {} go together: both, to forward writes to the writer, or neither",
                    name("cluster", "node_cert"),
                    name("cluster", "node_key")
                ));
            }
        }
        if !matches!(
            self.log.level.as_str(),
            "error" | "warn" | "info" | "debug" | "trace"
        ) {
            return Err(format!(
                "{} {:?}: expected error, warn, info, debug or trace",
                name("log", "level"),
                self.log.level
            ));
        }
        Ok(())
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
# QUIC endpoints sharing the listen port (SO_REUSEPORT), each with its own datagram task: up
# to one per core the node gives the datagram path (ops/CAPACITY.md). 1..=64.
endpoints = 1
# Threads that serve QUIC (the runtime's workers); 0 is one per core. On a small node shared
# with other work, fewer threads wake less often and cost less CPU per request
# (ops/CAPACITY.md, "Threads and wake-ups").
worker_threads = 0

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
# Reads executed at once over all connections; more are answered BUSY.
in_flight_max = 4096
# Writes executed at once, a budget of their own so that a stuck disk cannot take reads
# down; more are answered BUSY.
writes_in_flight_max = 256
# How long a write may wait for its fsync; past it the client is answered OUTCOME_UNKNOWN
# (retry the same request to learn the outcome). 100ms..25s.
write_timeout = "5s"
# Requests per second one client certificate may make (all its connections together), with a
# burst of one second's worth; more are answered RATE_LIMITED. 0 turns the limit off.
rate_per_identity = 5000
# New connections accepted per second (a burst of as many); more are refused at once with
# QUIC's CONNECTION_REFUSED and counted in mykey_connections_refused_total{{reason="handshake_rate"}}.
handshakes_per_second = 5000

[registry]
# Days an unconfirmed provisional registration lives; then CONFIRM answers PROVISIONAL_EXPIRED,
# lookups answer unknown MyKey ID and the ID may be registered again. 1..365.
provisional_expiry_days = 30
# Changes of up to 4,096 revocations a push makes durable together, with one fsync, while
# registrations and links wait (lookups never do); a longer push lets them in between. 256 is
# ~1M revocations, ~0.3 s on a fast disk. Lower it if writes time out during pushes. 1..1221.
revocation_changes_per_hold = 256
# The encoding of the ID records this node writes (it reads both): 2, or 1 during a rolling
# upgrade of a cluster that still has nodes of a build before 2026-12-04, which read only 1
# (ops/RUNBOOK.md, "Upgrading to a build with new formats"). 1..2.
record_encoding = 2

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
        assert_eq!(table.len(), SECTIONS.len(), "sections of ops/mykeyd.toml");
        for (section, keys) in SECTIONS {
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

    #[test]
    fn values_out_of_range_are_refused_with_their_range() {
        for (from, to, key, range) in [
            (
                "endpoints = 1",
                "endpoints = 65",
                "server.endpoints",
                "1..=64",
            ),
            (
                "endpoints = 1",
                "endpoints = 0",
                "server.endpoints",
                "1..=64",
            ),
            (
                "worker_threads = 0",
                "worker_threads = 5000",
                "server.worker_threads",
                "0..=1024",
            ),
            (
                "compact_delta_keys = 1000000",
                "compact_delta_keys = 0",
                "store.compact_delta_keys",
                "1..=100000000",
            ),
            (
                "in_flight_max = 4096",
                "in_flight_max = 0",
                "limits.in_flight_max",
                "1..=65536",
            ),
            (
                "connections_max = 20000",
                "connections_max = 0",
                "limits.connections_max",
                "1..=100000",
            ),
            (
                "writes_in_flight_max = 256",
                "writes_in_flight_max = 1000",
                "limits.writes_in_flight_max",
                "1..=384",
            ),
            (
                "rate_per_identity = 5000",
                "rate_per_identity = 2000000",
                "limits.rate_per_identity",
                "0 (no limit) or 1..=1000000",
            ),
            (
                "write_timeout = \"5s\"",
                "write_timeout = \"30s\"",
                "limits.write_timeout",
                "100 ms..=25 s",
            ),
            (
                "write_timeout = \"5s\"",
                "write_timeout = \"50ms\"",
                "limits.write_timeout",
                "100 ms..=25 s",
            ),
            (
                "challenge_ttl_secs = 120",
                "challenge_ttl_secs = 0",
                "jpki.challenge_ttl_secs",
                "10..=3600",
            ),
            (
                "leaf_cache_entries = 65536",
                "leaf_cache_entries = 0",
                "jpki.leaf_cache_entries",
                "1..=16777216",
            ),
            (
                "revocation_changes_per_hold = 256",
                "revocation_changes_per_hold = 0",
                "registry.revocation_changes_per_hold",
                "1..=1221",
            ),
            (
                "revocation_changes_per_hold = 256",
                "revocation_changes_per_hold = 1222",
                "registry.revocation_changes_per_hold",
                "1..=1221",
            ),
            (
                "record_encoding = 2",
                "record_encoding = 3",
                "registry.record_encoding",
                "1..=2",
            ),
        ] {
            let text = example_text();
            assert!(text.contains(from), "{from}");
            let e = parse(&text.replace(from, to), &[])
                .expect_err(to)
                .to_string();
            assert!(e.contains(key) && e.contains(range), "{to}: {e}");
        }
        let e = parse(&example_text().replace("\"5s\"", "\"soon\""), &[])
            .expect_err("not a duration")
            .to_string();
        assert!(e.contains("not a duration"), "{e}");
        let c = parse(&example_text().replace("\"5s\"", "\"250ms\""), &[]).expect("250ms");
        assert_eq!(c.limits.write_timeout, Duration::from_millis(250));
        // A hold size in range reaches the registry's configuration.
        let text = example_text().replace(
            "revocation_changes_per_hold = 256",
            "revocation_changes_per_hold = 4",
        );
        let c = parse(&text, &[]).expect("4 changes");
        assert_eq!(c.registry.registry_config().revocation_changes_per_hold, 4);
        let c = parse(
            &example_text().replace("record_encoding = 2", "record_encoding = 1"),
            &[],
        )
        .expect("encoding 1");
        assert_eq!(
            c.registry.registry_config().record_encoding,
            crate::registry::RecordEncoding::V1
        );
    }

    #[test]
    fn an_override_is_named_as_the_variable_it_came_from() {
        // Out of range.
        let e = parse(&example_text(), &[("MYKEYD_STORE_COMPACT_DELTA_KEYS", "0")])
            .expect_err("zero")
            .to_string();
        assert!(
            e.contains("MYKEYD_STORE_COMPACT_DELTA_KEYS") && e.contains("1..=100000000"),
            "{e}"
        );
        // Of the wrong type.
        let e = parse(&example_text(), &[("MYKEYD_LIMITS_IN_FLIGHT_MAX", "many")])
            .expect_err("text")
            .to_string();
        assert!(
            e.contains("environment variable MYKEYD_LIMITS_IN_FLIGHT_MAX"),
            "{e}"
        );
        // A typo of a key of a known section is refused, naming the variable and the keys.
        let e = parse(&example_text(), &[("MYKEYD_STORE_COMPACT_DELTA_KEY", "5")])
            .expect_err("typo")
            .to_string();
        assert!(
            e.contains("environment variable MYKEYD_STORE_COMPACT_DELTA_KEY")
                && e.contains("compact_delta_keys"),
            "{e}"
        );
        assert!(!e.contains("mykeyd.toml: unknown field"), "{e}");
    }

    /// A script's `MYKEYD_BIN`, and what Kubernetes injects into every pod of a namespace with
    /// a Service named `mykeyd` (`MYKEYD_PORT`, `MYKEYD_SERVICE_HOST`, `MYKEYD_PORT_4433_UDP…`),
    /// name no section: they are not overrides, and the node starts with a warning for each.
    #[test]
    fn variables_that_only_share_the_prefix_are_ignored_with_a_warning() {
        let env = [
            ("MYKEYD_BIN", "/usr/local/bin/mykeyd"),
            ("MYKEYD_PORT", "udp://10.0.0.7:4433"),
            ("MYKEYD_SERVICE_HOST", "10.0.0.7"),
            ("MYKEYD_SERVICE_PORT", "4433"),
            ("MYKEYD_PORT_4433_UDP", "udp://10.0.0.7:4433"),
            ("MYKEYD_PORT_4433_UDP_PROTO", "udp"),
            ("MYKEYD_LOG_LEVEL", "debug"),
        ];
        let c = parse(&example_text(), &env).expect("starts");
        assert_eq!(c.log.level, "debug");
        assert_eq!(c.ignored_env.len(), 6, "{:?}", c.ignored_env);
        for (var, _) in &env[..6] {
            assert!(
                c.ignored_env
                    .iter()
                    .any(|w| w.starts_with(var) && w.contains("ignored")),
                "{var}: {:?}",
                c.ignored_env
            );
        }
        // A Service named `mykeyd-server` would inject MYKEYD_SERVER_PORT: that names the
        // [server] section, so it is refused as a typo (RUNBOOK: enableServiceLinks: false).
        let e = parse(
            &example_text(),
            &[("MYKEYD_SERVER_PORT", "tcp://10.0.0.7:4433")],
        )
        .expect_err("collides with [server]")
        .to_string();
        assert!(e.contains("MYKEYD_SERVER_PORT"), "{e}");
    }
}
