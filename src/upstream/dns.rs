//! Host name resolution, kept off the worker threads: monoio's `TcpStream::connect(host)`
//! resolves with a blocking call on the event loop and tries only the first address. Hosts
//! are resolved when a config is loaded (in the loader thread) and refreshed by one
//! background thread; workers only read the results through arc-swap.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use crate::config::Config;

/// Resolves every upstream endpoint of `config` that is a name, and the `[cluster]` Redis
/// host, storing the addresses. Failures are logged and leave the previous addresses (or
/// none) in place.
pub fn resolve_config(config: &Config) {
    if let Some(c) = &config.cluster {
        if c.host.parse::<std::net::IpAddr>().is_err() {
            match (c.host.as_str(), c.port).to_socket_addrs() {
                Ok(list) => {
                    let addrs: Vec<SocketAddr> = list.collect();
                    if !addrs.is_empty() && **c.addrs.load() != addrs {
                        c.addrs.store(Arc::new(addrs));
                    }
                }
                Err(e) => {
                    tracing::warn!(host = %c.host, error = %e, "could not resolve the cluster store host");
                }
            }
        }
    }
    for up in &config.upstreams {
        for (ep, slot) in up.endpoints.iter().zip(up.addrs.iter()) {
            if ep.host.parse::<std::net::IpAddr>().is_ok() {
                continue;
            }
            match (ep.host.as_str(), ep.port).to_socket_addrs() {
                Ok(list) => {
                    let mut addrs: Vec<SocketAddr> = list.collect();
                    addrs.dedup();
                    if addrs.is_empty() {
                        tracing::warn!(upstream = %up.name, host = %ep.host, "host resolved to no address");
                    } else if **slot.load() != addrs {
                        tracing::debug!(upstream = %up.name, host = %ep.host, ?addrs, "resolved");
                        slot.store(Arc::new(addrs));
                    }
                }
                Err(e) => {
                    tracing::warn!(upstream = %up.name, host = %ep.host, error = %e, "could not resolve upstream host");
                }
            }
        }
    }
}
