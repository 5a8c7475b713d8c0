//! Certificates for the HTTPS paths, made at bench time (rcgen): a CA, a leaf for
//! `bench.ringgate.test` that both proxies serve, and the client config trusting the CA.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::ServerName;

/// The name the load client sends as SNI and verifies.
pub const NAME: &str = "bench.ringgate.test";

/// A served certificate and the client side that trusts it.
pub struct BenchTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub client: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
}

pub fn generate() -> Result<BenchTls, String> {
    let err = |e: rcgen::Error| format!("certificate generation: {e}");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct subject names, or OpenSSL-based peers take the leaf for self-signed.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ringgate bench CA");
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(err)?).map_err(err)?;
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(vec![NAME.to_string()]).map_err(err)?;
    params.distinguished_name.push(DnType::CommonName, NAME);
    let cert = params.signed_by(&key, &ca).map_err(err)?;
    // The same client config ringgate builds for an upstream with `ca_file` (ring, ALPN
    // http/1.1, resumption): the client is identical for nginx and ringgate.
    let client = ringgate::upstream::tls::client_config(Some(ca.pem().as_bytes()))?;
    let server_name = ringgate::upstream::tls::server_name(NAME)?;
    Ok(BenchTls {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        client,
        server_name,
    })
}
