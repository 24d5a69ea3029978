//! The MyKey engine: the lookup tier of Japan's MyKey Platform.
//!
//! `id` holds the domain identifiers, `jpki` the trust in My Number cards (certificate chains,
//! challenges, partners' revocation lists), `store` the durable sharded memory-mapped tables,
//! `registry` the domain operations over them, and `population` the bulk-load file format.
//! Nothing in this library reads a clock or opens a socket: every operation takes an explicit
//! `now`, so the same code runs in tests, in replay and, later, in the QUIC server.
#![deny(missing_docs)]

pub mod client;
pub mod id;
pub mod jpki;
pub mod population;
pub mod registry;
pub mod server;
pub mod store;
pub mod wire;
