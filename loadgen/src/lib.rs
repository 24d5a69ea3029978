//! mykey-load: what a load tester needs to know before a national programme opens.
//!
//! `population` writes a realistic population in the engine's bulk-load format; `model` turns
//! a traffic model (~13,000 shopping streets plus libraries and facilities, Zipf-skewed, with
//! opening hours and a daily curve) into a schedule; `trace` is the replayable text format of a
//! schedule; `runner` drives a `mykeyd` open-loop (latency counted from each request's
//! scheduled start, so a stalled server shows) or closed-loop; `report` turns the outcome into
//! HDR percentiles, error classes and SLO verdicts, and `html` into a page of plots; `floor`
//! is the engine-less server a run is compared with. Everything is deterministic for a seed.
//! The library never reads the clock except in `runner`, which exists to.

pub mod floor;
pub mod html;
pub mod model;
pub mod population;
pub mod report;
pub mod rng;
pub mod runner;
pub mod trace;
