//! process_kill
