//! The AI gateway layer: what makes ringgate more than a reverse proxy. It reads the
//! request's `model` to route it ([`body`]), knows its clients ([`auth`]), counts tokens
//! and dollars from responses of both kinds ([`usage`]) and serves repeated non-streaming
//! requests from an exact-match cache ([`cache`]). Everything here is sans-IO except what
//! the proxy drives; the config side lives in [`crate::config::ai`].

pub mod anthropic;
pub mod auth;
pub mod body;
pub mod cache;
pub mod gemini;
pub mod sse;
pub mod usage;
