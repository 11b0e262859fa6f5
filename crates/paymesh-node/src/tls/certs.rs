//! A region's development CA and the certificates it issues (`paymesh certs`).
//!
//! [`generate`] writes PEM files into one directory: the CA (`ca.pem`,
//! `ca.key`), made on the first run and reused on later ones so more
//! certificates can be issued under it, and one certificate and key per
//! holder: `node-<region>-<id>`, `partner-<id>`, `operator-<name>` (`.pem`
//! and `.key`). Every certificate names its holder in exactly one SAN URI
//! ([`Identity::uri`]); node certificates also name the hosts they serve
//! (DNS names and IP addresses) and serve as both server and client
//! certificates, the others as client certificates only. Keys are ECDSA P-256
//! in PKCS#8, written with mode 0600; certificates are valid for
//! [`CERT_VALIDITY`], never beyond the CA's own end.
//!
//! This is for development and tests: a production region's keys come from
//! its operators' PKI, and the node only reads files ([`super::TlsFiles`]).

use std::fs;
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use paymesh_core::id::RegionId;
use rcgen::string::{Ia5String, PrintableString};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use x509_parser::asn1_rs::Tag;
use x509_parser::certificate::X509Certificate;
use x509_parser::pem::Pem;
use x509_parser::time::ASN1Time;

use crate::identity::Identity;

/// How long a certificate (the CA's too) is valid: one year.
pub const CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// How far before now a new certificate becomes valid, so that clocks a
/// little behind ours accept it at once.
const CLOCK_SKEW_ALLOWED: Duration = Duration::from_secs(60 * 60);

/// The hosts a node certificate names when none are given.
pub const DEFAULT_NODE_HOSTS: [&str; 2] = ["localhost", "127.0.0.1"];

/// The most certificates issued in one run.
pub const HOLDERS_MAX: usize = 1_000;

/// The most hosts one node certificate names.
pub const NODE_HOSTS_MAX: usize = 32;

/// The CA certificate's file name.
pub const CA_CERT_FILE: &str = "ca.pem";

/// The CA private key's file name.
pub const CA_KEY_FILE: &str = "ca.key";

/// The organisation named in every certificate's subject.
const ORGANIZATION: &str = "paymesh";

/// What to issue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSpec {
    /// The region whose CA signs; every node among `holders` must be of it.
    pub region: RegionId,
    /// One certificate each, in this order.
    pub holders: Vec<Identity>,
    /// The DNS names and IP addresses every node certificate names, e.g.
    /// [`DEFAULT_NODE_HOSTS`].
    pub node_hosts: Vec<String>,
}

/// What to do when a holder's certificate or key file exists already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Refuse, writing nothing (the default: `paymesh certs` without
    /// `--replace`).
    Refuse,
    /// Replace the files (reissuing a certificate).
    Replace,
}

/// Why certificates could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// The request itself is wrong (nothing was written).
    #[error("{0}")]
    Spec(String),
    /// Only one of `ca.pem` and `ca.key` exists.
    #[error("{present} exists but {missing} does not; restore it or remove both to make a new CA")]
    CaIncomplete {
        /// The file found.
        present: PathBuf,
        /// The file missing.
        missing: PathBuf,
    },
    /// A holder's file exists and [`Existing::Refuse`] was asked for.
    #[error("{0} exists; remove it or ask to replace existing files")]
    Exists(PathBuf),
    /// The existing CA cannot be used.
    #[error("existing CA {path}: {reason}")]
    Ca {
        /// The CA file at fault.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// rcgen could not generate a key or sign a certificate.
    #[error("{what}: {source}")]
    Rcgen {
        /// What was being made.
        what: String,
        /// The error.
        source: rcgen::Error,
    },
}

/// The CA's subject common name; it names the region, so that a CA is never
/// reused for another region by mistake.
pub fn ca_common_name(region: &RegionId) -> String {
    format!("paymesh development CA for region {region}")
}

/// Issue a certificate for each of `spec.holders` into `out_dir` (created if
/// missing), under the CA found there or a new one. Returns the files
/// written, in order: the CA's two files if it was made now, then each
/// holder's certificate and key. If a holder's file exists already, nothing
/// is written ([`generate_with`] can replace them).
pub fn generate(out_dir: &Path, spec: &CertSpec) -> Result<Vec<PathBuf>, CertsError> {
    generate_with(out_dir, spec, Existing::Refuse)
}

/// As [`generate`], with a choice about the holders' existing files. Every
/// file is written to a randomly named temporary file in `out_dir` first and
/// moved into place without following symbolic links.
pub fn generate_with(out_dir: &Path, spec: &CertSpec, existing: Existing) -> Result<Vec<PathBuf>, CertsError> {
    check_spec(spec)?;
    fs::create_dir_all(out_dir).map_err(|source| CertsError::Io { path: out_dir.to_owned(), source })?;
    if existing == Existing::Refuse {
        for holder in &spec.holders {
            let stem = holder.file_stem();
            for path in [out_dir.join(format!("{stem}.pem")), out_dir.join(format!("{stem}.key"))] {
                if path.symlink_metadata().is_ok() {
                    return Err(CertsError::Exists(path));
                }
            }
        }
    }
    let now = ASN1Time::now();
    let not_before = ASN1Time::new(now.to_datetime() - CLOCK_SKEW_ALLOWED);
    let a_year_from_now = ASN1Time::new(now.to_datetime() + CERT_VALIDITY);
    let mut written = Vec::new();

    let (ca_cert_path, ca_key_path) = (out_dir.join(CA_CERT_FILE), out_dir.join(CA_KEY_FILE));
    // A symbolic link counts as present (dangling or not): it is never followed.
    let present = |path: &Path| path.symlink_metadata().is_ok();
    let (issuer, ca_not_after) = match (present(&ca_cert_path), present(&ca_key_path)) {
        (true, true) => load_ca(&ca_cert_path, &ca_key_path, &spec.region, now)?,
        (false, false) => {
            let params = ca_params(&spec.region, not_before, a_year_from_now);
            let key = new_key("the CA key")?;
            let cert = params.self_signed(&key).map_err(rcgen_error("the CA certificate"))?;
            write_file(&ca_key_path, key.serialize_pem().as_bytes(), 0o600, Existing::Refuse)?;
            write_file(&ca_cert_path, cert.pem().as_bytes(), 0o644, Existing::Refuse)?;
            written.extend([ca_cert_path, ca_key_path]);
            (Issuer::new(params, key), a_year_from_now)
        }
        (true, false) => return Err(CertsError::CaIncomplete { present: ca_cert_path, missing: ca_key_path }),
        (false, true) => return Err(CertsError::CaIncomplete { present: ca_key_path, missing: ca_cert_path }),
    };

    let not_after = a_year_from_now.min(ca_not_after);
    for holder in &spec.holders {
        let params = leaf_params(holder, &spec.node_hosts, not_before, not_after)?;
        let key = new_key(&format!("the key of {holder}"))?;
        let cert = params.signed_by(&key, &issuer).map_err(rcgen_error(&format!("the certificate of {holder}")))?;
        let stem = holder.file_stem();
        let (cert_path, key_path) = (out_dir.join(format!("{stem}.pem")), out_dir.join(format!("{stem}.key")));
        write_file(&key_path, key.serialize_pem().as_bytes(), 0o600, existing)?;
        write_file(&cert_path, cert.pem().as_bytes(), 0o644, existing)?;
        written.extend([cert_path, key_path]);
    }
    Ok(written)
}

fn check_spec(spec: &CertSpec) -> Result<(), CertsError> {
    let refuse = |reason: String| Err(CertsError::Spec(reason));
    if spec.holders.len() > HOLDERS_MAX {
        return refuse(format!("{} certificates requested; at most {HOLDERS_MAX} per run", spec.holders.len()));
    }
    for (index, holder) in spec.holders.iter().enumerate() {
        if spec.holders[..index].contains(holder) {
            return refuse(format!("{holder} is listed twice"));
        }
        if let Identity::Node { region, node_id } = holder {
            if region != &spec.region {
                return refuse(format!("node {node_id} is of region {region}, but the CA is region {}'s", spec.region));
            }
        }
    }
    let has_nodes = spec.holders.iter().any(|h| matches!(h, Identity::Node { .. }));
    if has_nodes && spec.node_hosts.is_empty() {
        return refuse("node certificates need at least one host (DNS name or IP address)".into());
    }
    if spec.node_hosts.len() > NODE_HOSTS_MAX {
        return refuse(format!(
            "{} hosts given; a node certificate names at most {NODE_HOSTS_MAX}",
            spec.node_hosts.len()
        ));
    }
    for host in &spec.node_hosts {
        if host.parse::<IpAddr>().is_err() && !super::is_dns_name(host) {
            return refuse(format!("host {host:?} is neither a DNS name nor an IP address"));
        }
    }
    Ok(())
}

fn rcgen_error(what: &str) -> impl FnOnce(rcgen::Error) -> CertsError + '_ {
    move |source| CertsError::Rcgen { what: what.to_owned(), source }
}

fn new_key(what: &str) -> Result<KeyPair, CertsError> {
    KeyPair::generate().map_err(rcgen_error(what))
}

fn ca_params(region: &RegionId, not_before: ASN1Time, not_after: ASN1Time) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, ORGANIZATION);
    params.distinguished_name.push(DnType::CommonName, ca_common_name(region));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = ca_key_usages();
    params.not_before = not_before.to_datetime();
    params.not_after = not_after.to_datetime();
    params
}

fn ca_key_usages() -> Vec<KeyUsagePurpose> {
    vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature]
}

fn leaf_params(
    holder: &Identity,
    node_hosts: &[String],
    not_before: ASN1Time,
    not_after: ASN1Time,
) -> Result<CertificateParams, CertsError> {
    let ia5 = |text: String| {
        Ia5String::try_from(text.as_str()).map_err(|source| CertsError::Rcgen { what: format!("SAN {text:?}"), source })
    };
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, ORGANIZATION);
    params.distinguished_name.push(DnType::CommonName, holder.to_string());
    params.subject_alt_names.push(SanType::URI(ia5(holder.uri())?));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if let Identity::Node { .. } = holder {
        params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        for host in node_hosts {
            params.subject_alt_names.push(match host.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(ia5(host.clone())?),
            });
        }
    }
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before.to_datetime();
    params.not_after = not_after.to_datetime();
    Ok(params)
}

/// The CA in `cert_path` and `key_path`, checked: a CA certificate of
/// `region`'s, still valid, whose key is the one in `key_path`. Returns the
/// issuer and the CA's end of validity.
fn load_ca(
    cert_path: &Path,
    key_path: &Path,
    region: &RegionId,
    now: ASN1Time,
) -> Result<(Issuer<'static, KeyPair>, ASN1Time), CertsError> {
    let ca_error = |path: &Path, reason: String| CertsError::Ca { path: path.to_owned(), reason };
    let read = |path: &Path| fs::read(path).map_err(|source| CertsError::Io { path: path.to_owned(), source });

    let key_pem = read(key_path)?;
    let key = KeyPair::from_pem(&String::from_utf8_lossy(&key_pem))
        .map_err(|e| ca_error(key_path, format!("not a PKCS#8 private key: {e}")))?;

    let cert_pem = read(cert_path)?;
    let block = Pem::iter_from_buffer(&cert_pem)
        .next()
        .ok_or_else(|| ca_error(cert_path, "no PEM block".into()))?
        .map_err(|e| ca_error(cert_path, format!("not valid PEM: {e}")))?;
    let cert = block.parse_x509().map_err(|e| ca_error(cert_path, format!("not an X.509 certificate: {e}")))?;
    if !cert.is_ca() {
        return Err(ca_error(cert_path, "not a CA certificate".into()));
    }
    let expected = ca_common_name(region);
    let names: Vec<&str> = cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).collect();
    if names != [expected.as_str()] {
        return Err(ca_error(
            cert_path,
            format!(
                "its subject is {}, not {expected:?}; issue region {region}'s in another directory",
                cert.subject()
            ),
        ));
    }
    if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
        return Err(ca_error(key_path, format!("this key does not belong to {}", cert_path.display())));
    }
    let not_after = cert.validity().not_after;
    if not_after <= now {
        return Err(ca_error(cert_path, format!("expired at {not_after}; remove ca.pem and ca.key to make a new CA")));
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = subject_of(&cert).map_err(|reason| ca_error(cert_path, reason))?;
    params.key_usages = ca_key_usages();
    Ok((Issuer::new(params, key), not_after))
}

/// The subject of `cert` re-encoded attribute by attribute with the same
/// string types, so that certificates issued now name the CA exactly as the
/// CA names itself (path building compares names byte by byte).
fn subject_of(cert: &X509Certificate<'_>) -> Result<DistinguishedName, String> {
    let mut name = DistinguishedName::new();
    for attribute in cert.subject().iter_attributes() {
        let oid: Vec<u64> = attribute
            .attr_type()
            .iter()
            .ok_or_else(|| format!("subject attribute {} has an unsupported type", attribute.attr_type()))?
            .collect();
        let text = attribute.as_str().map_err(|e| format!("subject attribute {}: {e}", attribute.attr_type()))?;
        let value = match attribute.attr_value().tag() {
            Tag::Utf8String => DnValue::Utf8String(text.to_owned()),
            Tag::PrintableString => DnValue::PrintableString(
                PrintableString::try_from(text).map_err(|e| format!("subject attribute {text:?}: {e}"))?,
            ),
            other => return Err(format!("subject attribute {text:?} has the unsupported string type {other}")),
        };
        name.push(DnType::from_oid(&oid), value);
    }
    Ok(name)
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> CertsError + '_ {
    move |source| CertsError::Io { path: path.to_owned(), source }
}

/// Write `contents` to `path` with permission bits `mode`: into a new file
/// with a random name in the same directory (created exclusively, so no file
/// or symbolic link planted there is opened), then moved to `path`. With
/// [`Existing::Refuse`] the move fails if anything is at `path`, a symbolic
/// link included (a hard link, never following one); with
/// [`Existing::Replace`] it is a rename, which replaces a link itself rather
/// than writing where it points. The temporary file is removed on failure.
fn write_file(path: &Path, contents: &[u8], mode: u32, existing: Existing) -> Result<(), CertsError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut file = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(io_error(dir))?;
    // The umask may have cleared bits of `mode`; set them exactly.
    file.as_file().set_permissions(fs::Permissions::from_mode(mode)).map_err(io_error(file.path()))?;
    file.write_all(contents).and_then(|()| file.as_file().sync_all()).map_err(io_error(file.path()))?;
    let persisted = match existing {
        Existing::Refuse => file.persist_noclobber(path),
        Existing::Replace => file.persist(path),
    };
    persisted.map(drop).map_err(|e| CertsError::Io { path: path.to_owned(), source: e.error })
}

#[cfg(test)]
mod tests {
    use x509_parser::extensions::{GeneralName, ParsedExtension};

    use super::*;

    fn region(name: &str) -> RegionId {
        RegionId::new(name).unwrap()
    }

    fn spec(region_name: &str, holders: &[&str]) -> CertSpec {
        CertSpec {
            region: region(region_name),
            holders: holders.iter().map(|h| Identity::parse(h).unwrap()).collect(),
            node_hosts: DEFAULT_NODE_HOSTS.iter().map(|h| h.to_string()).collect(),
        }
    }

    fn der(path: &Path) -> Vec<u8> {
        let pem = fs::read(path).unwrap();
        Pem::iter_from_buffer(&pem).next().unwrap().unwrap().contents
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn names(paths: &[PathBuf]) -> Vec<String> {
        paths.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn a_new_directory_gets_a_ca_and_every_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("certs");
        let written =
            generate(&out, &spec("us-west", &["node:us-west:1", "partner:paypal-us", "operator:ops"])).unwrap();
        assert_eq!(
            names(&written),
            [
                "ca.pem",
                "ca.key",
                "node-us-west-1.pem",
                "node-us-west-1.key",
                "partner-paypal-us.pem",
                "partner-paypal-us.key",
                "operator-ops.pem",
                "operator-ops.key"
            ]
        );
        for path in &written {
            let expected = if path.extension().unwrap() == "key" { 0o600 } else { 0o644 };
            assert_eq!(mode(path), expected, "{}", path.display());
        }
        assert!(fs::read_dir(&out).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp")));

        let ca_der = der(&out.join("ca.pem"));
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert!(ca.is_ca());
        assert_eq!(
            ca.subject().iter_common_name().next().unwrap().as_str().unwrap(),
            ca_common_name(&region("us-west"))
        );

        let node_der = der(&out.join("node-us-west-1.pem"));
        let (_, node) = x509_parser::parse_x509_certificate(&node_der).unwrap();
        assert!(!node.is_ca());
        assert_eq!(node.issuer().as_raw(), ca.subject().as_raw(), "signed by the CA");
        let sans: Vec<String> = node
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::URI(uri) => format!("uri {uri}"),
                GeneralName::DNSName(dns) => format!("dns {dns}"),
                GeneralName::IPAddress(ip) => format!("ip {ip:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(sans, ["uri urn:paymesh:node:us-west:1", "dns localhost", "ip [127, 0, 0, 1]"]);
        let eku = node.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let lifetime = node.validity().not_after.timestamp() - node.validity().not_before.timestamp();
        let expected = (CERT_VALIDITY + CLOCK_SKEW_ALLOWED).as_secs() as i64;
        assert!((expected - 60..=expected).contains(&lifetime), "valid for {lifetime} s");

        let partner_der = der(&out.join("partner-paypal-us.pem"));
        let (_, partner) = x509_parser::parse_x509_certificate(&partner_der).unwrap();
        let eku = partner.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth, "a partner certificate is a client certificate only");
        let uris = partner.subject_alternative_name().unwrap().unwrap().value.general_names.len();
        assert_eq!(uris, 1, "a partner certificate names no hosts");
    }

    /// Every value holding a private key that `paymesh certs` wrote prints
    /// without it: neither the PEM's base64 body nor its bytes.
    #[test]
    fn loaded_keys_never_reach_debug_output() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), &spec("us-west", &["node:us-west:1"])).unwrap();
        let files = super::super::TlsFiles {
            ca_cert: dir.path().join("ca.pem"),
            cert: dir.path().join("node-us-west-1.pem"),
            key: dir.path().join("node-us-west-1.key"),
            revoked: None,
        };
        let pem = fs::read_to_string(&files.key).unwrap();
        let body: Vec<&str> = pem.lines().filter(|line| !line.starts_with("-----")).collect();
        let bytes = format!("{:?}", pem.as_bytes());
        let mut traces: Vec<String> = body.iter().map(|line| line.to_string()).collect();
        traces.extend([body.concat(), bytes[1..bytes.len() - 1].to_owned()]);
        let material = super::super::TlsMaterial::load(&files).unwrap();
        let key_pair = KeyPair::from_pem(&pem).unwrap();
        let printed = [
            format!("{material:?}"),
            format!("{:?}", material.credentials()),
            format!("{:#?}", material.credentials_trusting(b"ca".to_vec())),
            format!("{key_pair:?}"),
        ];
        for printed in printed {
            for trace in &traces {
                assert!(!printed.contains(trace.as_str()), "the key appears in {printed}");
            }
        }
    }

    #[test]
    fn a_second_run_reuses_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), &spec("us-west", &["partner:paypal-us"])).unwrap();
        let ca_before = fs::read(dir.path().join("ca.pem")).unwrap();
        let both = spec("us-west", &["partner:gcash-ph", "partner:paypal-us"]);
        let error = generate(dir.path(), &both).unwrap_err();
        assert!(error.to_string().contains("partner-paypal-us.pem exists"), "{error}");
        assert!(!dir.path().join("partner-gcash-ph.pem").exists(), "nothing is written");
        let written = generate_with(dir.path(), &both, Existing::Replace).unwrap();
        assert_eq!(
            names(&written),
            ["partner-gcash-ph.pem", "partner-gcash-ph.key", "partner-paypal-us.pem", "partner-paypal-us.key"]
        );
        assert_eq!(fs::read(dir.path().join("ca.pem")).unwrap(), ca_before, "the CA is kept");

        let ca_der = der(&dir.path().join("ca.pem"));
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        let leaf_der = der(&dir.path().join("partner-gcash-ph.pem"));
        let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
        assert_eq!(leaf.issuer().as_raw(), ca.subject().as_raw());
        let key_id = |cert: &X509Certificate<'_>, authority: bool| {
            cert.extensions().iter().find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) if !authority => Some(id.0.to_vec()),
                ParsedExtension::AuthorityKeyIdentifier(aki) if authority => {
                    aki.key_identifier.as_ref().map(|id| id.0.to_vec())
                }
                _ => None,
            })
        };
        assert!(key_id(&ca, false).is_some());
        assert_eq!(key_id(&leaf, true), key_id(&ca, false), "the issuer's key id is the CA's");
    }

    #[test]
    fn another_regions_ca_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), &spec("us-west", &[])).unwrap();
        let error = generate(dir.path(), &spec("cn-east", &["node:cn-east:1"])).unwrap_err();
        assert!(matches!(&error, CertsError::Ca { .. }), "{error:?}");
        assert!(error.to_string().contains("region cn-east"), "{error}");
        assert!(!dir.path().join("node-cn-east-1.pem").exists());
    }

    #[test]
    fn half_a_ca_or_a_foreign_ca_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), &spec("us-west", &["partner:paypal-us"])).unwrap();
        fs::copy(dir.path().join("partner-paypal-us.key"), dir.path().join("ca.key")).unwrap();
        let error = generate(dir.path(), &spec("us-west", &["operator:ops"])).unwrap_err();
        assert!(error.to_string().contains("does not belong"), "{error}");

        fs::remove_file(dir.path().join("ca.key")).unwrap();
        let error = generate(dir.path(), &spec("us-west", &["operator:ops"])).unwrap_err();
        assert!(matches!(&error, CertsError::CaIncomplete { missing, .. } if missing.ends_with("ca.key")), "{error:?}");
        assert!(!dir.path().join("operator-ops.pem").exists());
    }

    #[test]
    fn bad_requests_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("certs");
        let no_hosts = CertSpec { node_hosts: Vec::new(), ..spec("us-west", &["node:us-west:1"]) };
        let bad_host = CertSpec { node_hosts: vec!["bad host".into()], ..spec("us-west", &["node:us-west:1"]) };
        let cases = [
            (spec("us-west", &["node:cn-east:1"]), "of region cn-east"),
            (spec("us-west", &["partner:paypal-us", "partner:paypal-us"]), "listed twice"),
            (no_hosts, "at least one host"),
            (bad_host, "\"bad host\" is neither"),
        ];
        for (spec, expected) in cases {
            let error = generate(&out, &spec).unwrap_err();
            assert!(matches!(error, CertsError::Spec(_)), "{error:?}");
            assert!(error.to_string().contains(expected), "expected {expected:?} in {error}");
        }
        assert!(!out.exists());
    }

    /// Symbolic links planted where the files or their temporary files go
    /// are never followed: the files they point to stay as they were.
    #[test]
    fn planted_symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("certs");
        fs::create_dir(&out).unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        // The temporary names a predictable writer would use.
        for name in ["ca.key.tmp", "ca.pem.tmp", "partner-paypal-us.key.tmp", "partner-paypal-us.pem.tmp"] {
            std::os::unix::fs::symlink(&victim, out.join(name)).unwrap();
        }
        generate(&out, &spec("us-west", &["partner:paypal-us"])).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        let key = out.join("partner-paypal-us.key");
        assert!(key.symlink_metadata().unwrap().file_type().is_file());
        assert_eq!(mode(&key), 0o600);
    }

    /// A symbolic link at a holder's own file: refused by default, replaced
    /// (the link itself, not its target) when replacing is asked for.
    #[test]
    fn a_symlink_at_the_target_is_refused_or_replaced_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        let out = dir.path().join("certs");
        generate(&out, &spec("us-west", &[])).unwrap();
        let key = out.join("partner-paypal-us.key");
        std::os::unix::fs::symlink(&victim, &key).unwrap();
        let error = generate(&out, &spec("us-west", &["partner:paypal-us"])).unwrap_err();
        assert!(matches!(&error, CertsError::Exists(path) if path == &key), "{error:?}");
        assert!(!out.join("partner-paypal-us.pem").exists(), "nothing is written");

        generate_with(&out, &spec("us-west", &["partner:paypal-us"]), Existing::Replace).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert!(key.symlink_metadata().unwrap().file_type().is_file(), "the link itself was replaced");
        assert_eq!(mode(&key), 0o600);
        let leftovers: Vec<String> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
