//! Shared helpers for ringgate's integration tests: the mock OpenAI provider, a faithful
//! kubelet AtomicWriter, and a harness that runs the real gateway binary.

pub mod gateway;
pub mod kubelet;
pub mod mock_provider;
