//! The access log: one `tracing` event per finished request on target `ringgate::access`,
//! rendered as text or JSON by the subscriber set up in `main` (`RINGGATE_LOG_FORMAT`).
//! It never sees headers, so `Authorization` and API keys cannot reach it; the query string
//! is dropped from the logged path because clients sometimes put keys there.

use std::net::IpAddr;
use std::time::Duration;

use super::Observation;

fn secs(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_micros() as f64 / 1e6)
}

/// Writes the access-log line of one finished request. Timings are in seconds with
/// microsecond resolution, named as nginx's (`request_time`, `upstream_connect_time`,
/// `upstream_header_time`, `upstream_response_time`) plus `ttfb` for streams; absent ones
/// are omitted.
pub fn access_log(o: &Observation<'_>, request_id: &str, path: &str, client_ip: IpAddr) {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    tracing::info!(
        target: "ringgate::access",
        method = o.method,
        path,
        status = o.status,
        route = o.route.unwrap_or("-"),
        upstream = o.upstream.unwrap_or("-"),
        bytes_in = o.bytes_in,
        bytes_out = o.bytes_out,
        request_id,
        client_ip = %client_ip,
        request_time = o.total.as_micros() as f64 / 1e6,
        upstream_connect_time = secs(o.connect),
        upstream_header_time = secs(o.header),
        upstream_response_time = secs(o.response),
        ttfb = secs(o.ttfb),
        model = o.model.unwrap_or("-"),
        client = o.client.unwrap_or("-"),
        cache = o.cache.unwrap_or("-"),
        truncated = o.truncated.unwrap_or("-"),
        "access"
    );
}
