//! Mutual TLS for the node's servers and its clients.
//!
//! Every connection to a node is mutual TLS under the region's CA: the
//! server requires a client certificate signed by that CA, and a client
//! trusts only that CA and checks the server's name. Who the client is comes
//! from its certificate ([`crate::identity`]). A node's files are named in
//! its configuration's `[tls]` section ([`TlsFiles`]); `paymesh certs`
//! ([`certs`]) creates a development CA and certificates.
//!
//! The files are read and checked here, once, so that a missing file, a
//! certificate that does not parse or a key that belongs to another
//! certificate is reported with the file's name at start-up, rather than as
//! a failed handshake later.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Deserialize;
use tonic::transport::{Certificate, ClientTlsConfig, ServerTlsConfig};
use x509_parser::pem::Pem;

use crate::identity::{identity_from_der, Identity};

pub mod certs;

/// How long a TLS handshake may take before the server drops the connection.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest PEM file read, in bytes.
const PEM_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// A node's TLS files, the `[tls]` section of its configuration. Relative
/// paths are relative to the working directory.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The region's CA certificate (PEM): the only issuer trusted, for
    /// servers and for clients.
    pub ca_cert: PathBuf,
    /// This node's certificate (PEM), signed by the CA; the chain may follow.
    pub cert: PathBuf,
    /// The private key of `cert` (PEM).
    pub key: PathBuf,
    /// The region's revocation list: SHA-256 fingerprints of certificates
    /// the CA signed that may no longer call (one per line). Read at start
    /// and again on SIGHUP.
    #[serde(default)]
    pub revoked: Option<PathBuf>,
}

/// Why TLS could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A file does not hold what it should.
    #[error("{path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The private key is not the certificate's.
    #[error("the key in {key} does not belong to the certificate in {cert}")]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// The name a client is to verify the server by is not a host name or an
    /// IP address.
    #[error("server name {host:?} is neither a DNS name nor an IP address")]
    ServerName {
        /// The name given.
        host: String,
    },
}

/// The contents of [`TlsFiles`], read and checked: load once, then build as
/// many server and client configurations as needed.
#[derive(Clone)]
pub struct TlsMaterial {
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    identity: Identity,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial").field("identity", &self.identity).finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Read the three files and check them: the CA file holds only parseable
    /// certificates, the certificate file starts with a parseable certificate
    /// naming a paymesh identity, and the key file holds one private key,
    /// which (when it is PKCS#8, as `paymesh certs` writes) belongs to that
    /// certificate.
    pub fn load(files: &TlsFiles) -> Result<TlsMaterial, TlsError> {
        let ca_pem = read_pem_file(&files.ca_cert)?;
        let ca = certificates(&files.ca_cert, &ca_pem)?;
        for der in &ca {
            x509_parser::parse_x509_certificate(der).map_err(|e| parse_error(&files.ca_cert, e))?;
        }

        let cert_pem = read_pem_file(&files.cert)?;
        let chain = certificates(&files.cert, &cert_pem)?;
        let leaf = chain.first().ok_or_else(|| parse_error(&files.cert, "no certificate"))?;
        let identity = identity_from_der(leaf).map_err(|e| parse_error(&files.cert, e))?;
        let (_, leaf) = x509_parser::parse_x509_certificate(leaf).map_err(|e| parse_error(&files.cert, e))?;

        let key_pem = read_pem_file(&files.key)?;
        let blocks = pem_blocks(&files.key, &key_pem)?;
        let keys: Vec<&Pem> = blocks.iter().filter(|pem| pem.label.ends_with("PRIVATE KEY")).collect();
        let [key] = keys.as_slice() else {
            return Err(parse_error(&files.key, format!("expected one private key, found {}", keys.len())));
        };
        if key.label == "PRIVATE KEY" {
            let text = String::from_utf8_lossy(&key_pem);
            // Keys rcgen cannot read are left to rustls, which checks them at start-up.
            if let Ok(pair) = rcgen::KeyPair::from_pem(&text) {
                if pair.public_key_raw() != leaf.public_key().subject_public_key.data.as_ref() {
                    return Err(TlsError::KeyMismatch { key: files.key.clone(), cert: files.cert.clone() });
                }
            }
        }
        Ok(TlsMaterial { ca_pem, cert_pem, key_pem, identity })
    }

    /// The holder named by our own certificate.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// A server configuration: presents our certificate and **requires** a
    /// client certificate signed by the CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        self.server_config_trusting(&self.ca_pem)
    }

    /// A client configuration: presents our certificate, trusts only the CA,
    /// and verifies that the server's certificate names `server_host` (a DNS
    /// name or an IP address, as in the SAN entries of node certificates).
    /// Use it with an `https://` endpoint.
    pub fn client_config(&self, server_host: &str) -> Result<ClientTlsConfig, TlsError> {
        let host = check_server_host(server_host)?;
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(self.tls_identity())
            .domain_name(host))
    }

    /// The same material as the SDK's credentials, for dialing other nodes.
    pub fn credentials(&self) -> paymesh_client::Credentials {
        self.credentials_trusting(self.ca_pem.clone())
    }

    /// Our certificate with another trust root: for dialing a remote region,
    /// whose nodes' certificates its own CA (`ca_pem`) signed.
    pub fn credentials_trusting(&self, ca_pem: Vec<u8>) -> paymesh_client::Credentials {
        paymesh_client::Credentials::Tls { ca: ca_pem, cert: self.cert_pem.clone(), key: self.key_pem.clone() }
    }

    /// A server configuration presenting our certificate and requiring a
    /// client certificate signed by one of the CAs in `ca_pem` (the remote
    /// regions' CAs, on the inter-region listener).
    pub fn server_config_trusting(&self, ca_pem: &[u8]) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.tls_identity())
            .client_ca_root(Certificate::from_pem(ca_pem))
            .client_auth_optional(false)
            .timeout(TLS_HANDSHAKE_TIMEOUT)
    }

    /// A rustls server configuration like [`Self::server_config_trusting`]
    /// (our certificate, a client certificate signed by one of the CAs in
    /// `ca_pem` required, HTTP/2), for [`LiveServerTls`].
    pub fn rustls_server_config(&self, ca_pem: &[u8]) -> Result<rustls::ServerConfig, TlsError> {
        self.rustls_server_config_for(ca_pem, b"h2")
    }

    /// As [`Self::rustls_server_config`], for HTTP/1.1 (the operator
    /// console, which browsers reach).
    pub fn rustls_console_config(&self, ca_pem: &[u8]) -> Result<rustls::ServerConfig, TlsError> {
        self.rustls_server_config_for(ca_pem, b"http/1.1")
    }

    fn rustls_server_config_for(&self, ca_pem: &[u8], alpn: &[u8]) -> Result<rustls::ServerConfig, TlsError> {
        let invalid =
            |what: &str, e: &dyn fmt::Display| TlsError::Parse { path: PathBuf::from(what), reason: e.to_string() };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for der in der_blocks(ca_pem, |label| label == "CERTIFICATE") {
            roots.add(rustls::pki_types::CertificateDer::from(der)).map_err(|e| invalid("the CA file", &e))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| invalid("the CA file", &e))?;
        let chain: Vec<rustls::pki_types::CertificateDer<'static>> =
            der_blocks(&self.cert_pem, |label| label == "CERTIFICATE").into_iter().map(Into::into).collect();
        let key = Pem::iter_from_buffer(&self.key_pem)
            .filter_map(Result::ok)
            .find_map(|block| match block.label.as_str() {
                "PRIVATE KEY" => Some(rustls::pki_types::PrivateKeyDer::Pkcs8(block.contents.into())),
                "EC PRIVATE KEY" => Some(rustls::pki_types::PrivateKeyDer::Sec1(block.contents.into())),
                "RSA PRIVATE KEY" => Some(rustls::pki_types::PrivateKeyDer::Pkcs1(block.contents.into())),
                _ => None,
            })
            .ok_or_else(|| invalid("the key file", &"no private key"))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("TLS", &e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| invalid("the certificate and key", &e))?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(config)
    }

    /// The CA file's contents.
    pub fn ca_pem(&self) -> &[u8] {
        &self.ca_pem
    }

    fn tls_identity(&self) -> tonic::transport::Identity {
        tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem)
    }
}

/// The DER contents of the PEM blocks of `pem` whose label `wanted` accepts.
fn der_blocks(pem: &[u8], wanted: impl Fn(&str) -> bool) -> Vec<Vec<u8>> {
    Pem::iter_from_buffer(pem).filter_map(Result::ok).filter(|b| wanted(&b.label)).map(|b| b.contents).collect()
}

/// A server TLS configuration that can be replaced while the node runs (on
/// SIGHUP): every new connection's handshake uses the configuration in force
/// when it arrives; connections already open keep theirs.
#[derive(Clone)]
pub struct LiveServerTls {
    current: Arc<RwLock<Arc<rustls::ServerConfig>>>,
}

impl fmt::Debug for LiveServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveServerTls").finish_non_exhaustive()
    }
}

impl LiveServerTls {
    /// Starting with `config`.
    pub fn new(config: rustls::ServerConfig) -> LiveServerTls {
        LiveServerTls { current: Arc::new(RwLock::new(Arc::new(config))) }
    }

    /// Use `config` for the next handshakes.
    pub fn replace(&self, config: rustls::ServerConfig) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
    }

    /// An acceptor with the configuration in force.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// A server configuration from `files`: see [`TlsMaterial::server_config`].
pub fn server_tls(files: &TlsFiles) -> Result<ServerTlsConfig, TlsError> {
    Ok(TlsMaterial::load(files)?.server_config())
}

/// A client configuration from `files` for a server known as `server_host`:
/// see [`TlsMaterial::client_config`].
pub fn client_tls(files: &TlsFiles, server_host: &str) -> Result<ClientTlsConfig, TlsError> {
    TlsMaterial::load(files)?.client_config(server_host)
}

/// The host of a `host:port` address, without the brackets of an IPv6
/// literal: the name to verify a server by. A text without a port is
/// returned as it is.
pub fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        if let Some((host, _)) = rest.split_once(']') {
            return host;
        }
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => addr,
    }
}

/// `host` if it is an IP address or a plausible DNS name.
fn check_server_host(host: &str) -> Result<&str, TlsError> {
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.parse::<IpAddr>().is_ok() || is_dns_name(host) {
        Ok(host)
    } else {
        Err(TlsError::ServerName { host: host.to_owned() })
    }
}

/// Whether `name` is a DNS name: dot-separated labels of 1 to 63 ASCII
/// letters, digits and inner hyphens, 253 bytes at most.
pub(crate) fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn parse_error(path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError::Parse { path: path.to_owned(), reason: reason.to_string() }
}

fn read_pem_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_error = |source| TlsError::Read { path: path.to_owned(), source };
    let size = std::fs::metadata(path).map_err(read_error)?.len();
    if size > PEM_FILE_BYTES_MAX {
        return Err(parse_error(path, format!("{size} bytes; a PEM file may hold at most {PEM_FILE_BYTES_MAX}")));
    }
    std::fs::read(path).map_err(read_error)
}

fn pem_blocks(path: &Path, pem: &[u8]) -> Result<Vec<Pem>, TlsError> {
    let blocks = Pem::iter_from_buffer(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse_error(path, format!("not valid PEM: {e}")))?;
    if blocks.is_empty() {
        return Err(parse_error(path, "no PEM block (-----BEGIN ...-----) found"));
    }
    Ok(blocks)
}

/// The DER certificates of a PEM file that must hold certificates only.
fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<Vec<u8>>, TlsError> {
    pem_blocks(path, pem)?
        .into_iter()
        .map(|block| match block.label.as_str() {
            "CERTIFICATE" => Ok(block.contents),
            other => Err(parse_error(path, format!("expected certificates only, found a {other:?} block"))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use paymesh_core::id::RegionId;

    use super::certs::{generate, CertSpec};
    use super::*;

    /// A directory with a CA, node 1's and partner paypal-us's files, and
    /// the `TlsFiles` of node 1.
    fn issued() -> (tempfile::TempDir, TlsFiles) {
        let dir = tempfile::tempdir().unwrap();
        let spec = CertSpec {
            region: RegionId::new("us-west").unwrap(),
            holders: vec![Identity::parse("node:us-west:1").unwrap(), Identity::partner("paypal-us").unwrap()],
            node_hosts: vec!["localhost".into()],
        };
        generate(dir.path(), &spec).unwrap();
        let files = TlsFiles {
            ca_cert: dir.path().join("ca.pem"),
            cert: dir.path().join("node-us-west-1.pem"),
            key: dir.path().join("node-us-west-1.key"),
            revoked: None,
        };
        (dir, files)
    }

    #[test]
    fn good_files_load_and_name_their_holder() {
        let (_dir, files) = issued();
        let material = TlsMaterial::load(&files).unwrap();
        assert_eq!(material.identity(), &Identity::parse("node:us-west:1").unwrap());
        assert!(!format!("{material:?}").contains("PRIVATE"), "the key never reaches a log");
        assert!(server_tls(&files).is_ok());
        assert!(client_tls(&files, "localhost").is_ok());
        assert!(matches!(client_tls(&files, "not a host"), Err(TlsError::ServerName { .. })));
    }

    #[test]
    fn tls_errors_name_the_file() {
        let (dir, files) = issued();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "hello").unwrap();
        let cases = [
            (TlsFiles { ca_cert: dir.path().join("missing.pem"), ..files.clone() }, "missing.pem", "cannot read"),
            (TlsFiles { ca_cert: garbage.clone(), ..files.clone() }, "garbage.pem", "no PEM block"),
            (
                TlsFiles { ca_cert: files.key.clone(), ..files.clone() },
                "node-us-west-1.key",
                "expected certificates only",
            ),
            (TlsFiles { cert: files.key.clone(), ..files.clone() }, "node-us-west-1.key", "expected certificates only"),
            (TlsFiles { cert: files.ca_cert.clone(), ..files.clone() }, "ca.pem", "no paymesh identity"),
            (TlsFiles { key: files.cert.clone(), ..files.clone() }, "node-us-west-1.pem", "expected one private key"),
            (TlsFiles { key: garbage, ..files.clone() }, "garbage.pem", "no PEM block"),
            (
                TlsFiles { key: dir.path().join("partner-paypal-us.key"), ..files.clone() },
                "partner-paypal-us.key",
                "does not belong to the certificate",
            ),
        ];
        for (files, file, reason) in cases {
            let error = TlsMaterial::load(&files).unwrap_err().to_string();
            assert!(error.contains(file) && error.contains(reason), "expected {file} and {reason:?} in {error:?}");
        }
    }

    #[test]
    fn host_of_strips_the_port_and_ipv6_brackets() {
        assert_eq!(host_of("127.0.0.1:7001"), "127.0.0.1");
        assert_eq!(host_of("node-1.us-west.example:443"), "node-1.us-west.example");
        assert_eq!(host_of("[::1]:7001"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
        assert_eq!(host_of("::1"), "::1");
    }

    #[test]
    fn server_names_are_dns_names_or_ip_addresses() {
        assert!(check_server_host("localhost").is_ok());
        assert!(check_server_host("127.0.0.1").is_ok());
        assert!(check_server_host("[::1]").is_ok());
        assert!(check_server_host("node-1.example").is_ok());
        for bad in ["", "a b", "-x.example", "x..example", "host:7001", &"a".repeat(64)] {
            assert!(matches!(check_server_host(bad), Err(TlsError::ServerName { .. })), "{bad:?} accepted");
        }
    }
}
