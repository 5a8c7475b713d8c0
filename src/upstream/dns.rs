//! Host name resolution, kept off the worker threads: monoio's `TcpStream::connect(host)`
//! resolves with a blocking call on the event loop and tries only the first address. Hosts
//! are resolved when a config is loaded (in the loader thread) and refreshed by one
//! background thread; workers only read the results through arc-swap.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;

/// How often the background thread re-resolves every name (a moved provider address is
/// picked up within this, with no reload).
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);

/// Starts the thread that re-resolves the current config's names every `every` with
/// `resolve` until `stop` is set (it notices within 200 ms or `every`, whichever is
/// shorter). `current` runs the round on the config of the moment: the gateway passes its
/// store's and [`REFRESH_EVERY`]; tests pass their own resolver and interval.
pub fn spawn_refresher<C, R>(
    current: C,
    resolve: R,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>>
where
    C: Fn(&dyn Fn(&Config)) + Send + 'static,
    R: Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>> + Send + 'static,
{
    std::thread::Builder::new()
        .name("ringgate-dns".into())
        .spawn(move || {
            let step = every.min(Duration::from_millis(200));
            let mut waited = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(step);
                waited += step;
                if waited >= every {
                    waited = Duration::ZERO;
                    current(&|cfg| resolve_config_with(cfg, &resolve));
                }
            }
        })
}

/// Resolves every upstream endpoint of `config` that is a name, and the `[cluster]` Redis
/// host, storing the addresses. Failures are logged and leave the previous addresses (or
/// none) in place.
pub fn resolve_config(config: &Config) {
    resolve_config_with(config, system_resolve);
}

/// The system's resolver (getaddrinfo), every address it gives.
pub fn system_resolve(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    (host, port).to_socket_addrs().map(Iterator::collect)
}

/// [`resolve_config`] with the lookup given: tests pass a resolver whose answers they
/// control (a changed address, a failed lookup) instead of the system's.
pub fn resolve_config_with(
    config: &Config,
    resolve: impl Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>>,
) {
    if let Some(c) = &config.cluster {
        if c.host.parse::<std::net::IpAddr>().is_err() {
            match resolve(c.host.as_str(), c.port) {
                Ok(addrs) => {
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
            match resolve(ep.host.as_str(), ep.port) {
                Ok(mut addrs) => {
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

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    fn config() -> Config {
        let toml = "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [upstreams.u]\nurl = \"http://api.provider.test:8080\"\n\
             endpoints = [\"10.0.0.9:8080\"]\n\
             [[routes]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"u\"\n";
        crate::config::load_bytes_with(
            toml.as_bytes(),
            std::path::Path::new("."),
            crate::config::SecretFiles::Read,
        )
        .unwrap_or_else(|e| panic!("test config: {e}"))
    }

    fn addrs(cfg: &Config, ep: usize) -> Vec<SocketAddr> {
        (**cfg.upstreams[0].addrs[ep].load()).clone()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    /// The refresher thread re-resolves on its interval, with no reload: a name that moves
    /// is followed, and stopping it ends the thread.
    #[test]
    fn the_refresher_follows_a_moving_name_on_its_interval() {
        use std::sync::Mutex;
        let cfg = Arc::new(config());
        let answer = Arc::new(Mutex::new(vec![sa("10.3.3.3:8080")]));
        let rounds = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, a, n) = (cfg.clone(), answer.clone(), rounds.clone());
        let thread = spawn_refresher(
            move |round| round(&c),
            move |_, _| {
                n.fetch_add(1, Ordering::SeqCst);
                Ok(a.lock().map(|v| v.clone()).unwrap_or_default())
            },
            Duration::from_millis(10),
            stop.clone(),
        )
        .expect("thread");
        let wait = |want: &[SocketAddr]| {
            let start = std::time::Instant::now();
            while addrs(&cfg, 0) != want && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(addrs(&cfg, 0), want);
        };
        wait(&[sa("10.3.3.3:8080")]);
        *answer.lock().expect("lock") = vec![sa("10.4.4.4:8080"), sa("10.4.4.5:8080")];
        wait(&[sa("10.4.4.4:8080"), sa("10.4.4.5:8080")]);
        stop.store(true, Ordering::SeqCst);
        thread.join().expect("the refresher ends when stopped");
        let after = rounds.load(Ordering::SeqCst);
        assert!(after >= 2, "{after} rounds");
    }

    #[test]
    fn re_resolution_follows_the_name_and_a_failed_lookup_keeps_the_old_addresses() {
        let cfg = config();
        let answer: RefCell<std::io::Result<Vec<SocketAddr>>> =
            RefCell::new(Ok(vec![sa("10.1.1.1:8080"), sa("10.1.1.2:8080")]));
        let asked = RefCell::new(Vec::new());
        let resolve = |host: &str, port: u16| {
            asked.borrow_mut().push((host.to_string(), port));
            match &*answer.borrow() {
                Ok(a) => Ok(a.clone()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            }
        };
        resolve_config_with(&cfg, resolve);
        assert_eq!(addrs(&cfg, 0), [sa("10.1.1.1:8080"), sa("10.1.1.2:8080")]);
        // An IP endpoint is never looked up.
        assert_eq!(*asked.borrow(), [("api.provider.test".to_string(), 8080)]);
        // The name moved: the next round picks the new address up.
        *answer.borrow_mut() = Ok(vec![sa("10.2.2.2:8080")]);
        resolve_config_with(&cfg, resolve);
        assert_eq!(addrs(&cfg, 0), [sa("10.2.2.2:8080")]);
        // A failed lookup, or one with no address, keeps what worked last.
        *answer.borrow_mut() = Err(std::io::Error::other("SERVFAIL"));
        resolve_config_with(&cfg, resolve);
        assert_eq!(addrs(&cfg, 0), [sa("10.2.2.2:8080")]);
        *answer.borrow_mut() = Ok(Vec::new());
        resolve_config_with(&cfg, resolve);
        assert_eq!(addrs(&cfg, 0), [sa("10.2.2.2:8080")]);
    }
}
