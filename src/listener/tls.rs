//! The TLS listener's accept loop (`server.tls.listen`): admit the connection, run the
//! rustls handshake under `handshake_timeout_ms`, then hand the stream to the same proxy
//! loop plain connections use.
//!
//! Each handshake takes the `ServerConfig` of the worker's current config snapshot, so a
//! rotated certificate (a re-applied config) is served to the next connection while
//! established ones keep the session they negotiated. A failed or timed-out handshake is
//! counted, logged at debug level (clients probing with garbage are not an operator's
//! problem) and closes only that connection.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use monoio::net::TcpListener;
use rustls::ServerConfig;

use super::ClientStream;
use crate::worker::Worker;

/// Accepts TLS connections on `listener` until the worker drains.
pub async fn accept_tls(w: Rc<Worker>, listener: TcpListener) {
    // The TLS settings last seen in a config: removing `[server.tls]` on a reload is
    // restart-only, so this listener keeps serving the last certificates it had.
    let mut last: Option<(Arc<ServerConfig>, Duration)> = None;
    let mut failures = super::AcceptFailures::new(w.id, "tls");
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let Some(guard) = w.admit() else {
                    drop(tcp);
                    continue;
                };
                let snap = w.snapshot();
                if let Some(t) = &snap.config.server.tls {
                    if let Some(cfg) = &t.config {
                        if !last
                            .as_ref()
                            .is_some_and(|(c, d)| Arc::ptr_eq(c, cfg) && *d == t.handshake_timeout)
                        {
                            last = Some((cfg.clone(), t.handshake_timeout));
                        }
                    }
                }
                drop(snap);
                let Some((config, timeout)) = last.clone() else {
                    // Unreachable in practice: the listener is bound only when the initial
                    // config had certificates.
                    drop(tcp);
                    continue;
                };
                let w2 = w.clone();
                let w3 = w.clone();
                // The handshake runs inside the guard too: a panic in rustls closes only
                // this connection.
                let serve = async move {
                    // Set before the handshake: the socket is inside rustls' stream after it.
                    let _ = tcp.set_nodelay(true);
                    let fd = std::os::fd::AsRawFd::as_raw_fd(&tcp);
                    let acceptor = monoio_rustls::TlsAcceptor::from(config);
                    let handshake = monoio::time::timeout(timeout, acceptor.accept(tcp));
                    let res = monoio::select! {
                        r = handshake => Some(r),
                        _ = w2.drain.wait() => None,
                    };
                    match res {
                        Some(Ok(Ok(stream))) => {
                            w2.metrics.note_tls_handshake();
                            crate::proxy::serve_connection(
                                w2.clone(),
                                ClientStream::Tls(Box::new(stream), fd),
                                peer,
                            )
                            .await;
                        }
                        Some(Ok(Err(e))) => {
                            w2.metrics.note_tls_handshake_failure(false);
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Some(Err(_)) => {
                            w2.metrics.note_tls_handshake_failure(true);
                            tracing::debug!(%peer, timeout_ms = timeout.as_millis() as u64, "TLS handshake timed out");
                        }
                        None => {}
                    }
                };
                monoio::spawn(crate::task::guarded(
                    w3.metrics.clone(),
                    w3.id,
                    peer,
                    serve,
                    guard,
                ));
            }
            Err(e) => {
                if w.shared.draining.load(Ordering::Relaxed) {
                    break;
                }
                failures.handle(&w, &listener, &e).await;
            }
        }
    }
}
