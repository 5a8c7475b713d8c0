//! Test support for ringgate, shared by its integration tests, `cargo xtask` and manual runs.
//!
//! - [`MockProvider`] (module [`provider`]): a mock OpenAI-compatible LLM provider on
//!   blocking `std::net`, with request recording and header knobs for failures, delays,
//!   streams and quotas. The `mock_provider` binary serves it standalone
//!   (`cargo run -p ringgate-mock -- --listen 127.0.0.1:9000`).
//! - [`kubelet`]: a faithful re-enactment of kubelet's `AtomicWriter`, which projects a
//!   ConfigMap or Secret into a directory and updates it in kubelet's exact order.
//!
//! Nothing here is part of the gateway: ringgate takes this crate only as a dev-dependency.

pub mod kubelet;
pub mod provider;

pub use provider::{MockOptions, MockProvider, RecordedRequest};
