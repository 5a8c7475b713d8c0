//! Empty: the crate exists for its tests (`tests/evidence.rs`).
