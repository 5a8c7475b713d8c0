//! Shared helpers for ringgate's integration tests: a harness that runs the real gateway
//! binary. The mock provider and the kubelet projector live in the `ringgate-mock` crate.

pub mod gateway;
pub mod tls;
