//! Who is calling: the identity a caller proves with its TLS client
//! certificate.
//!
//! Every certificate of a region is signed by the region's CA and names its
//! holder in exactly one SAN URI:
//!
//! * `urn:paymesh:partner:<partner-id>` — a partner (wallet, acquirer, network);
//! * `urn:paymesh:operator:<name>` — a person or tool running the region;
//! * `urn:paymesh:node:<region>:<node-id>` — a paymesh node.
//!
//! A handler learns its caller from [`identity_of`], never from a request
//! field: a partner id in a request body is only ever compared with the
//! certificate's. Over plaintext (the development flag `insecure_plaintext`)
//! there is no certificate, and the caller names itself in the metadata
//! [`IDENTITY_METADATA`]; with TLS that metadata is ignored.
//!
//! [`identity_from_der`] does not verify the certificate: the TLS layer has
//! already checked its chain to the region's CA and its validity period
//! before a request reaches a handler.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use paymesh_core::id::{PartnerId, RegionId};
use tonic::{Request, Status};
use x509_parser::extensions::GeneralName;

/// The SAN URI prefix of a paymesh identity.
pub const IDENTITY_URI_PREFIX: &str = "urn:paymesh:";

/// The metadata key in which a caller names itself over plaintext
/// (development only): `partner:<id>`, `operator:<name>` or
/// `node:<region>:<id>`.
pub const IDENTITY_METADATA: &str = "x-paymesh-identity";

pub use paymesh_core::limits::OPERATOR_NAME_BYTES_MAX;

/// How much of an offending text an error message repeats, in characters.
const ERROR_TEXT_CHARS_MAX: usize = 80;

/// The authenticated caller of a request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A partner; its calls act on its own account only.
    Partner(PartnerId),
    /// An operator of the region (admin calls), named like a partner id:
    /// 1 to 32 of `[a-z0-9-]`, no hyphen at either end.
    Operator(String),
    /// A node of a region (Raft, forwarding, inter-region calls).
    Node {
        /// The node's region.
        region: RegionId,
        /// The node's id within its region; positive.
        node_id: u64,
    },
}

/// Why a certificate or an identity text names no valid identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The bytes are not a DER-encoded X.509 certificate.
    #[error("not a parseable X.509 certificate: {0}")]
    Unparseable(String),
    /// The certificate has no SAN URI starting with `urn:paymesh:`.
    #[error("the certificate names no paymesh identity (a SAN URI urn:paymesh:<kind>:<id>)")]
    NoIdentity,
    /// The certificate has more than one paymesh SAN URI.
    #[error("the certificate names {count} paymesh identities; exactly one is allowed")]
    SeveralIdentities {
        /// How many it names.
        count: usize,
    },
    /// The kind is not `partner`, `operator` or `node`.
    #[error("unknown identity kind {kind:?}; expected partner, operator or node")]
    UnknownKind {
        /// The kind found, shortened.
        kind: String,
    },
    /// The text is not of the form `<kind>:<id>`.
    #[error("identity {text:?} is not of the form {form}")]
    Malformed {
        /// The text, shortened.
        text: String,
        /// The expected form.
        form: &'static str,
    },
    /// The id part breaks its rules.
    #[error("invalid {what} in identity {text:?}: {reason}")]
    InvalidId {
        /// Which id: partner id, operator name, region id or node id.
        what: &'static str,
        /// The whole identity text, shortened.
        text: String,
        /// The rule broken.
        reason: String,
    },
}

impl Identity {
    /// Parse the form `partner:<id>`, `operator:<name>` or
    /// `node:<region>:<id>` (the metadata form, and the SAN URI without its
    /// `urn:paymesh:` prefix).
    pub fn parse(text: &str) -> Result<Identity, IdentityError> {
        const FORM: &str = "partner:<id>, operator:<name> or node:<region>:<id>";
        let malformed = || IdentityError::Malformed { text: shorten(text), form: FORM };
        let invalid =
            |what: &'static str, reason: String| IdentityError::InvalidId { what, text: shorten(text), reason };
        let (kind, rest) = text.split_once(':').ok_or_else(malformed)?;
        match kind {
            "partner" => PartnerId::new(rest).map(Identity::Partner).map_err(|e| invalid("partner id", e.to_string())),
            "operator" => {
                check_operator_name(rest).map_err(|reason| invalid("operator name", reason))?;
                Ok(Identity::Operator(rest.to_owned()))
            }
            "node" => {
                let (region, node_id) = rest.split_once(':').ok_or_else(malformed)?;
                let region = RegionId::new(region).map_err(|e| invalid("region id", e.to_string()))?;
                let node_id = parse_node_id(node_id).map_err(|reason| invalid("node id", reason))?;
                Ok(Identity::Node { region, node_id })
            }
            _ => Err(IdentityError::UnknownKind { kind: shorten(kind) }),
        }
    }

    /// A partner identity; fails if `id` is not a valid partner id.
    pub fn partner(id: &str) -> Result<Identity, IdentityError> {
        Identity::parse(&format!("partner:{id}"))
    }

    /// An operator identity; fails if `name` breaks the operator-name rules.
    pub fn operator(name: &str) -> Result<Identity, IdentityError> {
        Identity::parse(&format!("operator:{name}"))
    }

    /// The SAN URI that names this identity in a certificate.
    pub fn uri(&self) -> String {
        format!("{IDENTITY_URI_PREFIX}{self}")
    }

    /// The stem of this identity's certificate and key files:
    /// `partner-<id>`, `operator-<name>`, `node-<region>-<id>`.
    pub fn file_stem(&self) -> String {
        match self {
            Identity::Partner(id) => format!("partner-{id}"),
            Identity::Operator(name) => format!("operator-{name}"),
            Identity::Node { region, node_id } => format!("node-{region}-{node_id}"),
        }
    }
}

/// The metadata form: `partner:paypal-us`, `operator:ops`, `node:us-west:1`.
impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Partner(id) => write!(f, "partner:{id}"),
            Identity::Operator(name) => write!(f, "operator:{name}"),
            Identity::Node { region, node_id } => write!(f, "node:{region}:{node_id}"),
        }
    }
}

/// Check an operator name: 1 to [`OPERATOR_NAME_BYTES_MAX`] of lowercase
/// ASCII letters, digits and `-`, no hyphen at either end.
fn check_operator_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("operator name is empty".into());
    }
    if name.len() > OPERATOR_NAME_BYTES_MAX {
        return Err(format!("operator name is longer than {OPERATOR_NAME_BYTES_MAX} bytes"));
    }
    if let Some((index, c)) =
        name.char_indices().find(|&(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
    {
        return Err(format!(
            "operator name contains {c:?} at byte {index}; allowed: lowercase ASCII letters, digits and '-'"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("operator name must not start or end with '-'".into());
    }
    Ok(())
}

/// A node id in canonical decimal: positive, digits only, no leading zero,
/// so that every node has exactly one identity text.
fn parse_node_id(text: &str) -> Result<u64, String> {
    let canonical = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && !text.starts_with('0');
    match text.parse::<u64>() {
        Ok(id) if canonical => Ok(id),
        _ => Err(format!("{:?} is not a positive integer", shorten(text))),
    }
}

fn shorten(text: &str) -> String {
    text.chars().take(ERROR_TEXT_CHARS_MAX).collect()
}

/// The identity a DER-encoded certificate names in its one `urn:paymesh:` SAN
/// URI. SAN URIs of other schemes are ignored. The certificate's chain and
/// validity are not checked here (the TLS layer did that).
pub fn identity_from_der(cert_der: &[u8]) -> Result<Identity, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| IdentityError::Unparseable(shorten(&e.to_string())))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Unparseable(format!("subject alternative names: {}", shorten(&e.to_string()))))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => uri.strip_prefix(IDENTITY_URI_PREFIX),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(IdentityError::NoIdentity),
        [one] => Identity::parse(one),
        several => Err(IdentityError::SeveralIdentities { count: several.len() }),
    }
}

/// The caller of `request`.
///
/// With TLS (`plaintext` false) the caller is the holder of the first peer
/// certificate; any [`IDENTITY_METADATA`] is ignored. A request without a
/// certificate, or whose certificate names no valid identity, is refused with
/// UNAUTHENTICATED. Over plaintext (development only) the caller is whoever
/// [`IDENTITY_METADATA`] names; missing or malformed, UNAUTHENTICATED.
pub fn identity_of<T>(request: &Request<T>, plaintext: bool) -> Result<Identity, Status> {
    caller_of(request, plaintext).map(|caller| caller.identity)
}

/// A caller: who it is and, over TLS, its certificate's [`fingerprint`].
#[derive(Clone, Debug)]
struct Caller {
    identity: Identity,
    fingerprint: Option<[u8; 32]>,
}

/// As [`identity_of`], with the certificate's fingerprint.
fn caller_of<T>(request: &Request<T>, plaintext: bool) -> Result<Caller, Status> {
    if plaintext {
        let value = request.metadata().get(IDENTITY_METADATA).ok_or_else(|| {
            Status::unauthenticated(format!(
                "no {IDENTITY_METADATA} metadata: over plaintext the caller must name itself \
                 (partner:<id>, operator:<name> or node:<region>:<id>)"
            ))
        })?;
        let text = value
            .to_str()
            .map_err(|_| Status::unauthenticated(format!("{IDENTITY_METADATA} metadata is not ASCII text")))?;
        let identity =
            Identity::parse(text).map_err(|e| Status::unauthenticated(format!("{IDENTITY_METADATA}: {e}")))?;
        return Ok(Caller { identity, fingerprint: None });
    }
    let certs = request
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("no client certificate: connect with TLS and a paymesh certificate"))?;
    let leaf = certs.first().ok_or_else(|| Status::unauthenticated("the client presented no certificate"))?;
    caller_of_verified(leaf).map_err(|e| Status::unauthenticated(format!("client certificate: {e}")))
}

/// The largest revocation list read, in bytes.
const REVOKED_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// The SHA-256 of a certificate's DER encoding: how a revocation list names
/// a certificate (`openssl x509 -noout -fingerprint -sha256` prints the
/// same, with colons; so does `paymesh fingerprint`).
pub fn fingerprint(cert_der: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(cert_der).into()
}

/// The fingerprint of the first certificate in a PEM file, as the hex line a
/// revocation list takes.
pub fn fingerprint_file(path: &std::path::Path) -> Result<String, String> {
    let failed = |e: String| format!("{}: {e}", path.display());
    let pem = std::fs::read(path).map_err(|e| failed(e.to_string()))?;
    for block in x509_parser::pem::Pem::iter_from_buffer(&pem) {
        let block = block.map_err(|e| failed(e.to_string()))?;
        if block.label == "CERTIFICATE" {
            return Ok(hex::encode(fingerprint(&block.contents)));
        }
    }
    Err(failed("no certificate".into()))
}

/// Parse a revocation list: one SHA-256 certificate fingerprint per line, in
/// hex with or without colons, optionally after `SHA256 Fingerprint=` (as
/// openssl prints it); `#` starts a comment, and blank lines are ignored.
pub fn parse_revoked(text: &str) -> Result<HashSet<[u8; 32]>, String> {
    let mut revoked = HashSet::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let hex_text: String = line.rsplit('=').next().unwrap_or(line).chars().filter(|c| *c != ':').collect();
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(&hex_text, &mut bytes).map_err(|_| {
            format!("line {}: not a SHA-256 fingerprint (64 hex digits): {}", number + 1, shorten(line))
        })?;
        revoked.insert(bytes);
    }
    Ok(revoked)
}

/// Who is calling, and whether its certificate was revoked: the one way a
/// node's services learn their caller ([`identity_of`] plus the region's
/// revocation list). The list is a file named in the `[tls]` section
/// (`revoked`), read at start and again by [`Authenticator::reload`] (on
/// SIGHUP), without a restart: a revoked certificate is refused on its next
/// call, on connections opened before the reload too.
#[derive(Clone, Debug)]
pub struct Authenticator {
    plaintext: bool,
    revoked_file: Option<PathBuf>,
    revoked: Arc<RwLock<Arc<HashSet<[u8; 32]>>>>,
}

impl Authenticator {
    /// Callers over plaintext (development) name themselves; with TLS their
    /// certificate does, unless `revoked_file` lists it.
    pub fn new(plaintext: bool, revoked_file: Option<PathBuf>) -> Result<Authenticator, String> {
        let authenticator = Authenticator { plaintext, revoked_file, revoked: Arc::default() };
        authenticator.reload()?;
        Ok(authenticator)
    }

    /// Read the revocation list again; the number of certificates it lists.
    /// On an error the list in force stays as it was.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(path) = &self.revoked_file else { return Ok(0) };
        let failed = |e: String| format!("tls.revoked {}: {e}", path.display());
        let size = std::fs::metadata(path).map_err(|e| failed(e.to_string()))?.len();
        if size > REVOKED_FILE_BYTES_MAX {
            return Err(failed(format!("{size} bytes; at most {REVOKED_FILE_BYTES_MAX}")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
        let revoked = parse_revoked(&text).map_err(failed)?;
        let count = revoked.len();
        *self.revoked.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(revoked);
        Ok(count)
    }

    /// The caller of `request`: see [`identity_of`]; a revoked certificate
    /// is UNAUTHENTICATED.
    pub fn identify<T>(&self, request: &Request<T>) -> Result<Identity, Status> {
        self.admit(caller_of(request, self.plaintext)?).map_err(Status::unauthenticated)
    }

    /// The holder of a client certificate the TLS handshake verified
    /// against the region's CA (the operator console's listener, which is
    /// not gRPC): the identity it names, unless it names none or is
    /// revoked.
    pub fn identify_certificate(&self, cert_der: &[u8]) -> Result<Identity, String> {
        let caller = caller_of_verified(cert_der).map_err(|e| format!("client certificate: {e}"))?;
        self.admit(caller)
    }

    /// The caller's identity, unless its certificate is revoked.
    fn admit(&self, Caller { identity, fingerprint }: Caller) -> Result<Identity, String> {
        if let Some(print) = fingerprint {
            if self.revoked.read().unwrap_or_else(|p| p.into_inner()).contains(&print) {
                return Err(format!("the certificate of {identity} is revoked in this region"));
            }
        }
        Ok(identity)
    }
}

/// Certificates whose identities are remembered, at most; the memory is
/// emptied when it is full.
const KNOWN_CERTIFICATES_MAX: usize = 4_096;

/// [`identity_from_der`] and the [`fingerprint`] for a certificate the TLS
/// handshake verified, remembered by its exact bytes: parsing X.509 (and
/// hashing it, while the revocation list is not empty) on every request cost
/// the leader a twentieth of its CPU, while a connection presents the same
/// certificate on every request. Only successful parses are remembered.
fn caller_of_verified(cert_der: &[u8]) -> Result<Caller, IdentityError> {
    static KNOWN: OnceLock<Mutex<HashMap<Vec<u8>, Caller>>> = OnceLock::new();
    let known = KNOWN.get_or_init(Mutex::default);
    if let Some(caller) = known.lock().unwrap_or_else(|p| p.into_inner()).get(cert_der) {
        return Ok(caller.clone());
    }
    let caller = Caller { identity: identity_from_der(cert_der)?, fingerprint: Some(fingerprint(cert_der)) };
    let mut known = known.lock().unwrap_or_else(|p| p.into_inner());
    if known.len() >= KNOWN_CERTIFICATES_MAX {
        known.clear();
    }
    known.insert(cert_der.to_vec(), caller.clone());
    Ok(caller)
}

fn wrong_kind(identity: &Identity, wanted: &str) -> Status {
    Status::permission_denied(format!("{identity} may not make this call; it needs a {wanted} certificate"))
}

/// The partner, if `identity` is one; PERMISSION_DENIED otherwise. Compose
/// with [`identity_of`]: `identity_of(&request, plaintext).and_then(require_partner)?`.
pub fn require_partner(identity: Identity) -> Result<PartnerId, Status> {
    match identity {
        Identity::Partner(id) => Ok(id),
        other => Err(wrong_kind(&other, "partner")),
    }
}

/// The operator's name, if `identity` is an operator; PERMISSION_DENIED otherwise.
pub fn require_operator(identity: Identity) -> Result<String, Status> {
    match identity {
        Identity::Operator(name) => Ok(name),
        other => Err(wrong_kind(&other, "operator")),
    }
}

/// The node's region and id, if `identity` is a node of any region (as
/// inter-region calls are); PERMISSION_DENIED otherwise.
pub fn require_node(identity: Identity) -> Result<(RegionId, u64), Status> {
    match identity {
        Identity::Node { region, node_id } => Ok((region, node_id)),
        other => Err(wrong_kind(&other, "node")),
    }
}

/// The node's id, if `identity` is a node of `region` (as Raft and forwarded
/// calls must be); PERMISSION_DENIED otherwise.
pub fn require_node_of(identity: Identity, region: &RegionId) -> Result<u64, Status> {
    match identity {
        Identity::Node { region: theirs, node_id } if &theirs == region => Ok(node_id),
        Identity::Node { region: theirs, node_id } => Err(Status::permission_denied(format!(
            "node {node_id} of region {theirs} may not make this call; it needs a node of region {region}"
        ))),
        other => Err(wrong_kind(&other, &format!("{region} node"))),
    }
}

#[cfg(test)]
mod tests {
    use rcgen::string::Ia5String;
    use rcgen::{CertificateParams, KeyPair, SanType};
    use tonic::Code;
    use x509_parser::pem::Pem;

    use super::*;
    use crate::tls::certs::{self, CertSpec};

    fn partner(id: &str) -> Identity {
        Identity::Partner(PartnerId::new(id).unwrap())
    }

    fn node(region: &str, node_id: u64) -> Identity {
        Identity::Node { region: RegionId::new(region).unwrap(), node_id }
    }

    /// A self-signed certificate whose SANs are `localhost` and these URIs.
    fn certificate_with_uris(uris: &[&str]) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        for uri in uris {
            params.subject_alt_names.push(SanType::URI(Ia5String::try_from(*uri).unwrap()));
        }
        params.self_signed(&KeyPair::generate().unwrap()).unwrap().der().to_vec()
    }

    #[test]
    fn generated_certificates_name_their_holders() {
        let dir = tempfile::tempdir().unwrap();
        let holders = vec![partner("paypal-us"), Identity::Operator("ops".into()), node("us-west", 3)];
        let spec = CertSpec {
            region: RegionId::new("us-west").unwrap(),
            holders: holders.clone(),
            node_hosts: vec!["localhost".into()],
        };
        certs::generate(dir.path(), &spec).unwrap();
        for holder in holders {
            let pem = std::fs::read(dir.path().join(format!("{}.pem", holder.file_stem()))).unwrap();
            let der = Pem::iter_from_buffer(&pem).next().unwrap().unwrap().contents;
            assert_eq!(identity_from_der(&der), Ok(holder));
        }
        let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let ca = Pem::iter_from_buffer(&ca).next().unwrap().unwrap().contents;
        assert_eq!(identity_from_der(&ca), Err(IdentityError::NoIdentity), "the CA is nobody");
    }

    /// The remembered caller of a certificate carries its fingerprint, the
    /// one the revocation list names, the first time and every time after.
    #[test]
    fn a_remembered_certificate_keeps_its_identity_and_fingerprint() {
        let der = certificate_with_uris(&["urn:paymesh:partner:paypal-us"]);
        for _ in 0..2 {
            let caller = caller_of_verified(&der).unwrap();
            assert_eq!(caller.identity, partner("paypal-us"));
            assert_eq!(caller.fingerprint, Some(fingerprint(&der)));
        }
        let other = certificate_with_uris(&["urn:paymesh:partner:paypal-us"]);
        assert_eq!(caller_of_verified(&other).unwrap().fingerprint, Some(fingerprint(&other)));
        assert_ne!(fingerprint(&der), fingerprint(&other), "two certificates of one holder are told apart");
    }

    #[test]
    fn a_certificate_without_a_paymesh_uri_names_nobody() {
        assert_eq!(identity_from_der(&certificate_with_uris(&[])), Err(IdentityError::NoIdentity));
        let other_scheme = certificate_with_uris(&["spiffe://example.org/paypal-us"]);
        assert_eq!(identity_from_der(&other_scheme), Err(IdentityError::NoIdentity));
    }

    #[test]
    fn a_certificate_naming_two_identities_is_refused() {
        let two = certificate_with_uris(&["urn:paymesh:partner:paypal-us", "urn:paymesh:operator:ops"]);
        assert_eq!(identity_from_der(&two), Err(IdentityError::SeveralIdentities { count: 2 }));
        let same_twice = certificate_with_uris(&["urn:paymesh:partner:paypal-us", "urn:paymesh:partner:paypal-us"]);
        assert_eq!(identity_from_der(&same_twice), Err(IdentityError::SeveralIdentities { count: 2 }));
        let one_and_another_scheme =
            certificate_with_uris(&["spiffe://example.org/x", "urn:paymesh:partner:paypal-us"]);
        assert_eq!(identity_from_der(&one_and_another_scheme), Ok(partner("paypal-us")));
    }

    #[test]
    fn an_unknown_kind_is_refused() {
        let robot = certificate_with_uris(&["urn:paymesh:robot:x"]);
        assert_eq!(identity_from_der(&robot), Err(IdentityError::UnknownKind { kind: "robot".into() }));
    }

    #[test]
    fn invalid_ids_in_a_certificate_are_refused() {
        let bad_partner = certificate_with_uris(&["urn:paymesh:partner:PayPal"]);
        let error = identity_from_der(&bad_partner).unwrap_err();
        assert!(matches!(&error, IdentityError::InvalidId { what: "partner id", .. }), "{error:?}");
        assert!(error.to_string().contains("'P' at byte 0"), "{error}");
    }

    #[test]
    fn identity_texts_are_checked_part_by_part() {
        let invalid = |text: &str, what: &str| match Identity::parse(text) {
            Err(IdentityError::InvalidId { what: found, .. }) => assert_eq!(found, what, "{text}"),
            other => panic!("{text}: expected an invalid {what}, got {other:?}"),
        };
        invalid("partner:", "partner id");
        invalid("partner:-paypal", "partner id");
        invalid(&format!("partner:{}", "p".repeat(33)), "partner id");
        invalid("operator:Ops", "operator name");
        invalid("operator:ops-", "operator name");
        invalid(&format!("operator:{}", "o".repeat(33)), "operator name");
        invalid("node:US:1", "region id");
        invalid("node:us-west:0", "node id");
        invalid("node:us-west:01", "node id");
        invalid("node:us-west:+1", "node id");
        invalid("node:us-west:1:2", "node id");
        invalid("node:us-west:18446744073709551616", "node id");
        assert!(matches!(Identity::parse("paypal-us"), Err(IdentityError::Malformed { .. })));
        assert!(matches!(Identity::parse("node:us-west"), Err(IdentityError::Malformed { .. })));
        assert!(matches!(Identity::parse("Partner:x"), Err(IdentityError::UnknownKind { .. })));
        assert_eq!(Identity::parse(&format!("operator:{}", "o".repeat(32))), Ok(Identity::Operator("o".repeat(32))));
        assert_eq!(Identity::parse("node:us-west:18446744073709551615"), Ok(node("us-west", u64::MAX)));
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(matches!(identity_from_der(b"not a certificate"), Err(IdentityError::Unparseable(_))));
        assert!(matches!(identity_from_der(&[]), Err(IdentityError::Unparseable(_))));
    }

    #[test]
    fn identities_print_parse_and_name_their_files() {
        for (identity, text, stem) in [
            (partner("paypal-us"), "partner:paypal-us", "partner-paypal-us"),
            (Identity::Operator("ops".into()), "operator:ops", "operator-ops"),
            (node("us-west", 2), "node:us-west:2", "node-us-west-2"),
        ] {
            assert_eq!(identity.to_string(), text);
            assert_eq!(Identity::parse(text), Ok(identity.clone()));
            assert_eq!(identity.uri(), format!("urn:paymesh:{text}"));
            assert_eq!(identity.file_stem(), stem);
        }
        assert_eq!(Identity::partner("gcash-ph"), Ok(partner("gcash-ph")));
        assert!(Identity::operator("Ops").is_err());
    }

    fn request_naming(identity: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(identity) = identity {
            request.metadata_mut().insert(IDENTITY_METADATA, identity.parse().unwrap());
        }
        request
    }

    #[test]
    fn over_plaintext_the_caller_names_itself_in_metadata() {
        assert_eq!(identity_of(&request_naming(Some("partner:paypal-us")), true).unwrap(), partner("paypal-us"));
        assert_eq!(identity_of(&request_naming(Some("node:us-west:2")), true).unwrap(), node("us-west", 2));
        let missing = identity_of(&request_naming(None), true).unwrap_err();
        assert_eq!(missing.code(), Code::Unauthenticated);
        assert!(missing.message().contains("no x-paymesh-identity"), "{}", missing.message());
        let malformed = identity_of(&request_naming(Some("partner:PayPal")), true).unwrap_err();
        assert_eq!(malformed.code(), Code::Unauthenticated);
        assert!(malformed.message().contains("invalid partner id"), "{}", malformed.message());
    }

    #[test]
    fn with_tls_the_metadata_is_never_trusted() {
        let status = identity_of(&request_naming(Some("operator:ops")), false).unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert!(status.message().contains("no client certificate"), "{}", status.message());
    }

    #[test]
    fn the_require_helpers_refuse_the_wrong_kind() {
        let operator = Identity::Operator("ops".into());
        assert_eq!(require_partner(partner("paypal-us")).unwrap(), PartnerId::new("paypal-us").unwrap());
        assert_eq!(require_operator(operator.clone()).unwrap(), "ops");
        assert_eq!(require_node(node("cn-east", 4)).unwrap(), (RegionId::new("cn-east").unwrap(), 4));
        let us_west = RegionId::new("us-west").unwrap();
        assert_eq!(require_node_of(node("us-west", 4), &us_west).unwrap(), 4);
        for refused in [
            require_partner(operator.clone()).map(|_| ()),
            require_operator(node("us-west", 1)).map(|_| ()),
            require_node(partner("paypal-us")).map(|_| ()),
            require_node_of(node("cn-east", 4), &us_west).map(|_| ()),
            require_node_of(operator, &us_west).map(|_| ()),
        ] {
            assert_eq!(refused.unwrap_err().code(), Code::PermissionDenied);
        }
    }

    #[test]
    fn a_revocation_list_takes_hex_with_or_without_colons_and_comments() {
        let print = fingerprint(b"a certificate");
        let plain = hex::encode(print);
        let colons =
            plain.as_bytes().chunks(2).map(|c| std::str::from_utf8(c).unwrap().to_uppercase()).collect::<Vec<_>>();
        let text = format!("# revoked\n\n{plain}  # wallet-a\nSHA256 Fingerprint={}\n", colons.join(":"));
        assert_eq!(parse_revoked(&text).unwrap(), HashSet::from([print]));
        let bad = parse_revoked("not-a-fingerprint\n").unwrap_err();
        assert!(bad.contains("line 1"), "{bad}");
    }
}
