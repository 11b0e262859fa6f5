//! `paymesh certs`: a region's development CA and certificates, written as
//! PEM files (the work is `paymesh_node::tls::certs::generate`).

use std::path::PathBuf;

use anyhow::{bail, Context};
use paymesh_node::identity::Identity;
use paymesh_node::tls::certs::{self, CertSpec, Existing, CA_CERT_FILE, DEFAULT_NODE_HOSTS};

/// The arguments of `paymesh certs`.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct CertsArgs {
    /// The directory to write to (created if missing). A CA already there
    /// (ca.pem, ca.key) is reused, so more certificates can be issued later.
    #[arg(long)]
    out: PathBuf,
    /// The region whose CA signs, e.g. us-west.
    #[arg(long)]
    region: String,
    /// Node ids to issue node certificates for, e.g. 1,2,3.
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,
    /// The DNS names and IP addresses every node certificate names: the hosts
    /// peers and clients dial the nodes by.
    #[arg(long, value_delimiter = ',', default_values = DEFAULT_NODE_HOSTS)]
    hosts: Vec<String>,
    /// Partner ids to issue client certificates for, e.g. paypal-us,gcash-ph.
    #[arg(long, value_delimiter = ',')]
    partners: Vec<String>,
    /// Operator names to issue client certificates for (admin calls).
    #[arg(long, value_delimiter = ',')]
    operators: Vec<String>,
    /// Replace a holder's existing certificate and key (reissue). Without
    /// it, an existing file (or a symbolic link) stops the run before
    /// anything is written.
    #[arg(long)]
    replace: bool,
}

impl CertsArgs {
    /// The request these arguments describe, every id checked.
    fn spec(&self) -> anyhow::Result<CertSpec> {
        let region = self.region.parse().with_context(|| format!("--region {:?}", self.region))?;
        let mut holders = Vec::new();
        for node in &self.nodes {
            let identity = Identity::parse(&format!("node:{}:{node}", self.region))
                .with_context(|| format!("--nodes: node id {node:?} must be a positive integer"))?;
            holders.push(identity);
        }
        for partner in &self.partners {
            holders.push(Identity::partner(partner).with_context(|| format!("--partners: {partner:?}"))?);
        }
        for operator in &self.operators {
            holders.push(Identity::operator(operator).with_context(|| format!("--operators: {operator:?}"))?);
        }
        if holders.is_empty() {
            bail!("nothing to issue: give --nodes, --partners or --operators");
        }
        Ok(CertSpec { region, holders, node_hosts: self.hosts.clone() })
    }
}

/// Issue the certificates and print the files written.
pub(crate) fn run(args: &CertsArgs) -> anyhow::Result<()> {
    let spec = args.spec()?;
    let existing = if args.replace { Existing::Replace } else { Existing::Refuse };
    let written = certs::generate_with(&args.out, &spec, existing)
        .with_context(|| format!("writing certificates to {}", args.out.display()))?;
    if !written.iter().any(|path| path.ends_with(CA_CERT_FILE)) {
        println!("reusing the CA in {}", args.out.display());
    }
    for path in &written {
        let note = if path.extension().is_some_and(|e| e == "key") { "  (private key, mode 0600)" } else { "" };
        println!("{}{note}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Command {
        #[command(flatten)]
        args: CertsArgs,
    }

    fn args(line: &[&str]) -> CertsArgs {
        Command::try_parse_from(["certs"].iter().chain(line)).unwrap().args
    }

    #[test]
    fn the_documented_command_issues_every_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().to_str().unwrap();
        let line = ["--out", out, "--region", "us-west", "--nodes", "1,2,3", "--partners", "paypal-us,gcash-ph"];
        let args = args(&[&line[..], &["--operators", "ops"]].concat());
        assert_eq!(args.hosts, DEFAULT_NODE_HOSTS);
        let spec = args.spec().unwrap();
        let holders: Vec<String> = spec.holders.iter().map(|h| h.to_string()).collect();
        assert_eq!(
            holders,
            [
                "node:us-west:1",
                "node:us-west:2",
                "node:us-west:3",
                "partner:paypal-us",
                "partner:gcash-ph",
                "operator:ops"
            ]
        );
        run(&args).unwrap();
        let again = format!("{:#}", run(&args).unwrap_err());
        assert!(again.contains("node-us-west-1.pem exists"), "{again}");
        let mut replacing = args.clone();
        replacing.replace = true;
        run(&replacing).unwrap();
        for stem in ["ca", "node-us-west-3", "partner-gcash-ph", "operator-ops"] {
            assert!(dir.path().join(format!("{stem}.pem")).exists(), "{stem}.pem");
            assert!(dir.path().join(format!("{stem}.key")).exists(), "{stem}.key");
        }
    }

    #[test]
    fn bad_ids_are_named_in_the_error() {
        let cases: [(&[&str], &str); 6] = [
            (&["--region", "US-West", "--nodes", "1"], "--region \"US-West\": region id contains 'U'"),
            (&["--region", "us-west", "--nodes", "0"], "--nodes: node id \"0\" must be a positive integer"),
            (&["--region", "us-west", "--nodes", "one"], "--nodes: node id \"one\""),
            (&["--region", "us-west", "--partners", "paypal-us,-gcash"], "--partners: \"-gcash\""),
            (&["--region", "us-west", "--operators", "Ops"], "--operators: \"Ops\""),
            (&["--region", "us-west"], "nothing to issue"),
        ];
        for (line, expected) in cases {
            let error = args(&[&["--out", "unused"], line].concat()).spec().unwrap_err();
            assert!(format!("{error:#}").contains(expected), "expected {expected:?} in {error:#}");
        }
    }
}
