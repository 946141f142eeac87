//! Certificates and keys of the local backend, all fresh per run: the API
//! server's serving certificate and the CA that signed it, a client CA and the
//! admin's client certificate (group `system:masters`, so RBAC lets it do
//! anything), the service-account token signing key, and the kubeconfig that
//! ties them together. etcd listens on loopback without TLS.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// Where the files went.
#[derive(Debug, Clone)]
pub struct Pki {
    /// CA of the API server's serving certificate (the kubeconfig trusts it).
    pub server_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// CA the API server accepts client certificates from.
    pub client_ca: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    /// Service-account token signing key and its public half.
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
}

fn ca(name: &str) -> anyhow::Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

fn write(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// Writes a new PKI into `dir`; the API server's certificate also names `extra_hosts`.
pub fn generate(dir: &Path, extra_hosts: &[&str]) -> anyhow::Result<Pki> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let p = Pki {
        server_ca: dir.join("server-ca.pem"),
        server_cert: dir.join("apiserver.crt"),
        server_key: dir.join("apiserver.key"),
        client_ca: dir.join("client-ca.pem"),
        admin_cert: dir.join("admin.crt"),
        admin_key: dir.join("admin.key"),
        sa_key: dir.join("service-account.key"),
        sa_pub: dir.join("service-account.pub"),
    };

    let server_ca = ca("portcullis-e2e server CA")?;
    let hosts = [
        "127.0.0.1",
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "10.0.0.1",
    ];
    let mut params =
        CertificateParams::new(hosts.iter().chain(extra_hosts).map(|h| (*h).to_owned()).collect::<Vec<_>>())?;
    params.distinguished_name.push(DnType::CommonName, "kube-apiserver");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &server_ca)?;
    write(&p.server_ca, &server_ca.pem())?;
    write(&p.server_cert, &cert.pem())?;
    write(&p.server_key, &key.serialize_pem())?;

    let client_ca = ca("portcullis-e2e client CA")?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, "portcullis-e2e-admin");
    params.distinguished_name.push(DnType::OrganizationName, "system:masters");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &client_ca)?;
    write(&p.client_ca, &client_ca.pem())?;
    write(&p.admin_cert, &cert.pem())?;
    write(&p.admin_key, &key.serialize_pem())?;

    let sa = KeyPair::generate()?;
    write(&p.sa_key, &sa.serialize_pem())?;
    write(&p.sa_pub, &sa.public_key_pem())?;
    Ok(p)
}

/// Writes an admin kubeconfig for the API server at `server` (https://...).
pub fn write_kubeconfig(path: &Path, server: &str, pki: &Pki) -> anyhow::Result<()> {
    let abs = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf()).display().to_string();
    let text = format!(
        "# Admin kubeconfig of the e2e local backend (cargo xtask e2e); valid while it runs.
apiVersion: v1
kind: Config
clusters:
  - name: portcullis-e2e
    cluster:
      server: {server}
      certificate-authority: {ca}
users:
  - name: portcullis-e2e-admin
    user:
      client-certificate: {cert}
      client-key: {key}
contexts:
  - name: portcullis-e2e
    context:
      cluster: portcullis-e2e
      user: portcullis-e2e-admin
current-context: portcullis-e2e
",
        ca = abs(&pki.server_ca),
        cert = abs(&pki.admin_cert),
        key = abs(&pki.admin_key),
    );
    write(path, &text)
}
