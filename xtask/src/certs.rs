//! Development certificates: a throwaway CA and a serving certificate it
//! signed, for `cargo xtask run`, the e2e suite and manual testing.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// Where the files went.
pub struct DevCerts {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn paths(dir: &Path) -> DevCerts {
    DevCerts { ca: dir.join("ca.pem"), cert: dir.join("tls.crt"), key: dir.join("tls.key") }
}

/// Reuses the certificates in `dir`, or writes new ones for localhost.
pub fn ensure_dev_certs(dir: &Path) -> anyhow::Result<DevCerts> {
    let p = paths(dir);
    if p.ca.exists() && p.cert.exists() && p.key.exists() {
        return Ok(p);
    }
    write_dev_certs(dir, &["localhost".into(), "127.0.0.1".into(), "::1".into()])
}

/// Writes a new CA and a serving certificate for `hosts` into `dir`.
pub fn write_dev_certs(dir: &Path, hosts: &[String]) -> anyhow::Result<DevCerts> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(DnType::CommonName, "Portcullis development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut params = CertificateParams::new(hosts.to_vec())?;
    params.distinguished_name.push(DnType::CommonName, hosts.first().map_or("localhost", String::as_str));
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;

    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let p = paths(dir);
    std::fs::write(&p.ca, ca.pem())?;
    std::fs::write(&p.cert, cert.pem())?;
    std::fs::write(&p.key, key.serialize_pem())?;
    Ok(p)
}
