//! The MyKey engine: the lookup tier of Japan's MyKey Platform.
//!
//! `id` holds the domain identifiers, `jpki` the trust in My Number cards (certificate chains,
//! challenges, partners' revocation lists), `store` the durable sharded memory-mapped tables,
//! `registry` the domain operations over them, `answer` the values those operations answer
//! with, `population` the bulk-load file format, `wire` the mykey/1 codec, and `server` and
//! `client` the QUIC service and its client.
//! Outside `server` and `client`, nothing reads the wall clock or opens a socket: every domain
//! operation takes an explicit `now`, so the same code runs in tests, in replay and in the
//! server. (The store times its fsyncs and compactions with a monotonic clock, for metrics
//! only.)
#![deny(missing_docs)]

pub mod answer;
pub mod client;
pub mod cluster;
pub mod id;
pub mod jpki;
pub mod par;
pub mod population;
pub mod registry;
pub mod server;
pub mod store;
pub mod wire;
