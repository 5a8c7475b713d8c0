//! `[server.tls]`: the HTTPS listener's settings and certificates, validated and compiled
//! into one shared rustls `ServerConfig`.
//!
//! Certificates are config inputs like any other: they are read, checked (PEM, a private key
//! that matches the leaf, valid SNI names) and compiled together with `gateway.toml`. So a
//! rotated Secret is a config re-apply: the new `ServerConfig` is published through the same
//! arc-swap, each new handshake takes the current one, established connections keep their
//! session, and a broken pair is a rejected reload that leaves the old certificates serving.
//!
//! The session cache and ticket keys are process-wide and outlive generations, so a client
//! can resume its session across a certificate rotation.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer};
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use sha2::{Digest, Sha256};

use super::raw::RawServerTls;
use super::validate::Errors;
use super::SecretFiles;

/// `[server.tls]`, compiled.
#[derive(Clone)]
pub struct ServerTls {
    /// HTTPS listen address (bound at start-up; a change is restart-only).
    pub listen: SocketAddr,
    /// Time a client gets to complete its handshake.
    pub handshake_timeout: Duration,
    /// The rustls config every new handshake uses: SNI resolver over the certificates,
    /// ALPN `http/1.1`, TLS 1.2 and 1.3, shared session cache and tickets. None only when
    /// the config was checked without reading secret files (`ringgate check`).
    pub config: Option<Arc<ServerConfig>>,
    /// One entry per certificate, for metrics and `/config`.
    pub certificates: Vec<CertificateInfo>,
    /// sha256 over every certificate and key file's bytes: tells a reload whether the
    /// certificates changed (for `ringgate_tls_certificate_reloads_total`).
    pub fingerprint: [u8; 32],
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("listen", &self.listen)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("certificates", &self.certificates)
            .finish_non_exhaustive()
    }
}

/// What operators see about one served certificate (never the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// `(default)` for the default certificate, else the entry's names.
    pub server_names: Vec<String>,
    /// The certificate file.
    pub cert_file: PathBuf,
    /// The leaf's notAfter, seconds since the Unix epoch (None if it could not be read).
    pub not_after: Option<i64>,
}

/// The label the default certificate is reported under.
pub const DEFAULT_NAME: &str = "(default)";

/// Validates and compiles `[server.tls]`. Every file it reads is appended to `watched`.
/// `other_listens` are the plain and admin listen addresses, which must differ.
pub(super) fn compile_server_tls(
    raw: &RawServerTls,
    base_dir: &Path,
    secrets: SecretFiles,
    other_listens: &[SocketAddr],
    watched: &mut Vec<PathBuf>,
    errs: &mut Errors,
) -> Option<ServerTls> {
    let listen = match raw.listen.parse::<SocketAddr>() {
        Ok(a) => {
            if a.port() != 0 && other_listens.contains(&a) {
                errs.push(
                    "server.tls.listen",
                    "must differ from server.listen and admin.listen",
                );
            }
            Some(a)
        }
        Err(_) => {
            errs.push(
                "server.tls.listen",
                format!(
                    "`{}` is not an `ip:port` address (e.g. \"0.0.0.0:8443\")",
                    raw.listen
                ),
            );
            None
        }
    };
    if !(1..=600_000).contains(&raw.handshake_timeout_ms) {
        errs.push(
            "server.tls.handshake_timeout_ms",
            format!(
                "{} is out of range 1..=600000 (milliseconds)",
                raw.handshake_timeout_ms
            ),
        );
    }

    // (key path of the entry, names, cert file, key file)
    let mut entries: Vec<(String, Vec<String>, &str, &str)> = vec![(
        "server.tls".to_string(),
        Vec::new(),
        raw.cert_file.as_str(),
        raw.key_file.as_str(),
    )];
    let mut seen: HashMap<String, String> = HashMap::new();
    for (i, e) in raw.sni.iter().enumerate() {
        let path = format!("server.tls.sni[{i}]");
        if e.server_names.is_empty() {
            errs.push(
                format!("{path}.server_names"),
                "list at least one name (e.g. \"api.example.com\" or \"*.example.com\")",
            );
        }
        let mut names = Vec::new();
        for (j, n) in e.server_names.iter().enumerate() {
            let key = format!("{path}.server_names[{j}]");
            match normalize_name(n) {
                Ok(n) => {
                    if let Some(first) = seen.get(&n) {
                        errs.push(key, format!("`{n}` is already listed at {first}"));
                    } else {
                        seen.insert(n.clone(), key);
                        names.push(n);
                    }
                }
                Err(m) => errs.push(key, m),
            }
        }
        entries.push((path, names, e.cert_file.as_str(), e.key_file.as_str()));
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut hasher = Sha256::new();
    let mut infos = Vec::new();
    let mut default = None;
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    let mut ok = true;
    for (path, names, cert_file, key_file) in &entries {
        let mut files = Vec::new();
        for (key, f) in [("cert_file", cert_file), ("key_file", key_file)] {
            if f.trim().is_empty() {
                errs.push(format!("{path}.{key}"), "must not be empty");
                ok = false;
            } else {
                let p = base_dir.join(f);
                watched.push(p.clone());
                files.push(p);
            }
        }
        if files.len() != 2 || secrets == SecretFiles::Skip {
            continue;
        }
        let (cert_path, key_path) = (&files[0], &files[1]);
        let bytes = match read_consistent(&files) {
            Ok(b) => b,
            Err((i, e)) => {
                let key = if i == 0 { "cert_file" } else { "key_file" };
                errs.push(
                    format!("{path}.{key}"),
                    format!("cannot read {}: {e}", files[i].display()),
                );
                ok = false;
                continue;
            }
        };
        for b in &bytes {
            hasher.update((b.len() as u64).to_le_bytes());
            hasher.update(b);
        }
        match certified_key(&bytes[0], &bytes[1], &provider) {
            Ok(ck) => {
                let not_after = ck.end_entity_cert().ok().and_then(|c| not_after_unix(c));
                let ck = Arc::new(ck);
                if names.is_empty() {
                    default = Some(ck);
                } else {
                    for n in names {
                        match n.strip_prefix("*.") {
                            Some(suffix) => wildcard.insert(suffix.to_string(), ck.clone()),
                            None => exact.insert(n.clone(), ck.clone()),
                        };
                    }
                }
                infos.push(CertificateInfo {
                    server_names: if names.is_empty() {
                        vec![DEFAULT_NAME.to_string()]
                    } else {
                        names.clone()
                    },
                    cert_file: cert_path.clone(),
                    not_after,
                });
            }
            Err((which, m)) => {
                let (key, file) = match which {
                    Which::Cert => ("cert_file", cert_path),
                    Which::Key => ("key_file", key_path),
                };
                errs.push(format!("{path}.{key}"), format!("{}: {m}", file.display()));
                ok = false;
            }
        }
    }
    let listen = listen?;
    let handshake_timeout = Duration::from_millis(raw.handshake_timeout_ms);
    if secrets == SecretFiles::Skip {
        return Some(ServerTls {
            listen,
            handshake_timeout,
            config: None,
            certificates: Vec::new(),
            fingerprint: [0; 32],
        });
    }
    if !ok {
        return None;
    }
    let default = default?;
    let resolver = SniResolver {
        exact,
        wildcard,
        default,
    };
    match server_config(provider, resolver) {
        Ok(config) => Some(ServerTls {
            listen,
            handshake_timeout,
            config: Some(config),
            certificates: infos,
            fingerprint: hasher.finalize().into(),
        }),
        Err(e) => {
            errs.push("server.tls", format!("TLS set-up failed: {e}"));
            None
        }
    }
}

/// Lower-cases a configured SNI name and checks it is a DNS name or a `*.` wildcard over one.
fn normalize_name(n: &str) -> Result<String, String> {
    let lower = n.trim_end_matches('.').to_ascii_lowercase();
    let base = lower.strip_prefix("*.").unwrap_or(&lower);
    if base.contains('*') {
        return Err(format!(
            "`{n}`: only a leading `*.` wildcard is allowed (e.g. \"*.example.com\")"
        ));
    }
    if base.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "`{n}` is an IP address; clients send no SNI for IP addresses, so it would never match"
        ));
    }
    match DnsName::try_from(base) {
        Ok(_) if base.contains('.') || lower == base => Ok(lower),
        Ok(_) => Err(format!(
            "`{n}`: a wildcard needs at least two labels after `*.`"
        )),
        Err(_) => Err(format!("`{n}` is not a DNS name")),
    }
}

/// Which file of a pair an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The certificate chain (`cert_file`).
    Cert,
    /// The private key (`key_file`).
    Key,
}

/// What is wrong with a PEM file, without any of its content: the parser's own messages
/// quote the offending line (`illegal section start: [..]`) or bytes of a failed base64
/// decode, which in a key file is the key itself (a PEM squeezed onto one line by a
/// `kubectl create secret --from-literal` is enough). Errors go to logs and `/config`.
fn pem_problem(e: &rustls::pki_types::pem::Error) -> &'static str {
    use rustls::pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { .. } => "a `-----BEGIN` section has no `-----END` line",
        Error::IllegalSectionStart { .. } => {
            "a `-----BEGIN` line is malformed (it must be alone on its line, ending in `-----`)"
        }
        Error::Base64Decode(_) => "a section is not valid base64",
        Error::Io(_) => "the file could not be read",
        Error::NoItemsFound => "no PEM section found",
        Error::SectionTooLarge => "a PEM section is too large",
        _ => "malformed PEM",
    }
}

/// Parses a PEM chain and key and checks the key belongs to the leaf (public for the fuzz
/// target over certificate and key bytes).
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, (Which, String)> {
    let mut chain = Vec::new();
    for c in CertificateDer::pem_slice_iter(cert_pem) {
        match c {
            Ok(c) => chain.push(c),
            Err(e) => {
                return Err((
                    Which::Cert,
                    format!("not a PEM certificate file: {}", pem_problem(&e)),
                ))
            }
        }
    }
    if chain.is_empty() {
        return Err((
            Which::Cert,
            "holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        (
            Which::Key,
            format!(
                "holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {}",
                pem_problem(&e)
            ),
        )
    })?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| (Which::Key, format!("private key not usable: {e}")))?;
    let ck = CertifiedKey::new(chain, signer);
    match ck.keys_match() {
        Ok(()) => Ok(ck),
        // Unknown: the key type cannot report its public key; rustls will fail the handshake
        // if it really does not match, so do not reject the pair for it.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(ck),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => Err((
            Which::Key,
            "does not match the certificate in cert_file (its public key differs)".into(),
        )),
        Err(e) => Err((Which::Cert, format!("certificate not usable: {e}"))),
    }
}

/// Reads files that may sit in Secret mounts, re-reading when a `..data` link beside any of
/// them changed during the reads, so a certificate and its key always come from one
/// projection (cert-manager writes both into one Secret; kubelet swaps them together).
/// On failure, returns the index of the file that could not be read.
fn read_consistent(files: &[PathBuf]) -> Result<Vec<Vec<u8>>, (usize, std::io::Error)> {
    let targets = || {
        files
            .iter()
            .map(|f| {
                let dir = f.parent().unwrap_or(Path::new("."));
                std::fs::read_link(dir.join("..data")).ok()
            })
            .collect::<Vec<_>>()
    };
    let mut last = None;
    for _ in 0..5 {
        let before = targets();
        let read: Result<Vec<_>, _> = files
            .iter()
            .enumerate()
            .map(|(i, f)| std::fs::read(f).map_err(|e| (i, e)))
            .collect();
        if before == targets() {
            return read;
        }
        last = Some(read);
    }
    // `..data` kept moving: use the last read; a mixed pair fails the key check and the
    // next event re-applies.
    last.unwrap_or_else(|| Ok(Vec::new()))
}

/// Picks the certificate by the client's SNI: exact name, then a one-label wildcard, then
/// the default (also for clients that send no SNI).
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    fn pick(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name else {
            return self.default.clone();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(ck) = self.exact.get(&name) {
            return ck.clone();
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(ck) = self.wildcard.get(parent) {
                return ck.clone();
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// Stateful-resumption cache shared by every generation (and worker).
fn session_cache() -> Arc<ServerSessionMemoryCache> {
    static CACHE: OnceLock<Arc<ServerSessionMemoryCache>> = OnceLock::new();
    CACHE
        .get_or_init(|| ServerSessionMemoryCache::new(4096))
        .clone()
}

/// Ticket keys (rotated by rustls every 6 h) shared by every generation, so a session
/// ticket issued before a certificate rotation still resumes after it.
fn ticketer() -> Option<Arc<dyn ProducesTickets>> {
    static TICKETER: OnceLock<Option<Arc<dyn ProducesTickets>>> = OnceLock::new();
    TICKETER
        .get_or_init(|| rustls::crypto::ring::Ticketer::new().ok())
        .clone()
}

fn server_config(
    provider: Arc<CryptoProvider>,
    resolver: SniResolver,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.session_storage = session_cache();
    if let Some(t) = ticketer() {
        config.ticketer = t;
    }
    Ok(Arc::new(config))
}

/// The leaf certificate's notAfter as Unix seconds, read with a minimal DER walk
/// (Certificate → TBSCertificate → validity → notAfter); None when the DER is not shaped
/// as expected. Enough for the expiry gauge without a full X.509 parser in the tree.
pub fn not_after_unix(der: &[u8]) -> Option<i64> {
    let (_, cert, _) = der_item(der)?;
    let (_, tbs, _) = der_item(cert)?;
    let mut rest = tbs;
    // Optional explicit version [0].
    let (tag, _, after) = der_item(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    // serialNumber, signature, issuer
    for _ in 0..3 {
        rest = der_item(rest)?.2;
    }
    let (tag, validity, _) = der_item(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, after_nb) = der_item(validity)?;
    let (tag, time, _) = der_item(after_nb)?;
    let text = std::str::from_utf8(time).ok()?;
    let digits = text.strip_suffix('Z')?;
    // ASCII digits only: the slicing below is by byte, and a multi-byte character would
    // put a slice boundary inside it (a panic, not a None).
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match tag {
        0x17 if digits.len() == 12 => {
            let yy: i64 = digits[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        0x18 if digits.len() == 14 => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, h, m, s) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    Some(crate::civil::days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s)
}

/// One DER TLV: (tag, contents, what follows).
fn der_item(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)? as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((tag, b.get(header..end)?, b.get(end..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key file the PEM parser refuses is reported without its content: rustls' own
    /// error quotes the offending line, which for a key squeezed onto one line is the key.
    #[test]
    fn key_file_errors_never_echo_the_key() {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["a.example".into()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let pem = key.serialize_pem();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let secret = &body[10..40];
        let one_line = pem.replacen("-----\n", "-----", 1);
        let bad_b64 = pem.replacen(&body[..8], "!!!!!!!!", 1);
        let provider = rustls::crypto::ring::default_provider();
        // The parser's own message quotes the one-line key: what would have leaked.
        let raw = PrivateKeyDer::from_pem_slice(one_line.as_bytes())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        // (as a byte list: `illegal section start: [45, 45, ..]`)
        let as_bytes = secret.as_bytes()[..8]
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        assert!(raw.contains(&as_bytes), "{raw}");
        for broken in [one_line, bad_b64] {
            let Err((_, msg)) = certified_key(cert.pem().as_bytes(), broken.as_bytes(), &provider)
            else {
                panic!("accepted: {broken}");
            };
            assert!(!msg.contains(secret) && !msg.contains(&as_bytes), "{msg}");
            assert!(msg.contains("PEM"), "{msg}");
        }
    }

    #[test]
    fn not_after_of_a_generated_certificate() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["a.example".into()]).expect("params");
        params.not_after = rcgen::date_time_ymd(2031, 7, 4);
        let cert = params.self_signed(&key).expect("cert");
        // 2031-07-04T00:00:00Z
        assert_eq!(not_after_unix(cert.der()), Some(1_940_889_600));
        assert_eq!(not_after_unix(b"\x30\x03\x02\x01"), None);
    }

    /// A DER certificate skeleton whose validity holds `not_after` (a UTCTime's bytes).
    fn cert_with_not_after(not_after: &[u8]) -> Vec<u8> {
        fn tlv(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
            let body = parts.concat();
            let mut v = vec![tag, body.len() as u8];
            v.extend(body);
            v
        }
        let validity = tlv(
            0x30,
            &[&tlv(0x17, &[b"250101000000Z"]), &tlv(0x17, &[not_after])],
        );
        let empty = tlv(0x30, &[]);
        let tbs = tlv(
            0x30,
            &[
                &tlv(0xa0, &[&[2, 1, 2]]),
                &[2, 1, 1],
                &empty,
                &empty,
                &validity,
            ],
        );
        tlv(0x30, &[&tbs])
    }

    /// A notAfter of the right length holding a multi-byte character is None, not a panic
    /// (a certificate file is operator input; compiling it runs on the reload thread).
    #[test]
    fn not_after_with_a_non_ascii_time_is_none() {
        let ok = cert_with_not_after(b"300101000000Z");
        assert_eq!(not_after_unix(&ok), Some(1_893_456_000));
        let bad = cert_with_not_after("1\u{e9}010100000Z".as_bytes());
        assert_eq!(not_after_unix(&bad), None);
    }

    #[test]
    fn names() {
        assert_eq!(
            normalize_name("API.Example.com."),
            Ok("api.example.com".into())
        );
        assert_eq!(normalize_name("*.example.com"), Ok("*.example.com".into()));
        assert!(normalize_name("*.com").is_err());
        assert!(normalize_name("a.*.com").is_err());
        assert!(normalize_name("127.0.0.1").is_err());
        assert!(normalize_name("bad name").is_err());
    }
}
