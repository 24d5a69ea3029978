//! crash_model
