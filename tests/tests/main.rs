//! The integration suite: one binary, one module per feature.

mod alloc_free;
mod backup;
mod cluster;
mod compaction;
mod corruption;
mod crash_model;
mod domain;
mod fuzz_bodies;
mod golden;
mod handler;
mod jpki;
mod jpki_registry;
mod ops;
mod population;
mod portability;
mod process_kill;
mod protocol_states;
mod server;
mod storage_faults;
mod wire;
