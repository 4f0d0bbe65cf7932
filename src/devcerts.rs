//! Throwaway development certificates (never for production): a dev CA, a default certificate
//! for `<domain>` and `*.<domain>`, and one leaf per tenant for `<tenant>.<domain>`.
//! ECDSA P-256 throughout.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// What `write` produced.
#[derive(Debug)]
pub struct DevCerts {
    pub ca_cert: PathBuf,
    pub default_cert: PathBuf,
    pub default_key: PathBuf,
    /// `(tenant, cert, key)`.
    pub tenants: Vec<(String, PathBuf, PathBuf)>,
}

fn rc(e: rcgen::Error) -> io::Error {
    io::Error::other(e)
}

/// Writes `ca.crt`, `ca.key`, `default.crt`, `default.key` and `<tenant>.crt` / `.key` into
/// `out`, plus `signing.key`, `jwt-hs.key` and `admin-token` (random secrets) if they do not
/// exist yet.
pub fn write(out: &Path, domain: &str, tenants: &[String]) -> io::Result<DevCerts> {
    fs::create_dir_all(out)?;
    let ca_key = KeyPair::generate().map_err(rc)?;
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        "tenant-gateway dev CA (not for production)",
    );
    ca.distinguished_name = dn;
    let ca_cert = ca.self_signed(&ca_key).map_err(rc)?;
    write_file(&out.join("ca.crt"), ca_cert.pem().as_bytes())?;
    write_secret(&out.join("ca.key"), ca_key.serialize_pem().as_bytes())?;
    let issuer = Issuer::new(ca, ca_key);

    let leaf = |names: Vec<String>, stem: &str| -> io::Result<(PathBuf, PathBuf)> {
        let key = KeyPair::generate().map_err(rc)?;
        let mut params = CertificateParams::new(names).map_err(rc)?;
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, stem);
        params.distinguished_name = dn;
        let cert = params.signed_by(&key, &issuer).map_err(rc)?;
        let (c, k) = (
            out.join(format!("{stem}.crt")),
            out.join(format!("{stem}.key")),
        );
        write_file(&c, cert.pem().as_bytes())?;
        write_secret(&k, key.serialize_pem().as_bytes())?;
        Ok((c, k))
    };
    let (default_cert, default_key) = leaf(
        vec![
            domain.to_owned(),
            format!("*.{domain}"),
            "localhost".to_owned(),
        ],
        "default",
    )?;
    let mut out_tenants = Vec::new();
    for t in tenants {
        let (c, k) = leaf(vec![format!("{t}.{domain}")], t)?;
        out_tenants.push((t.clone(), c, k));
    }
    // Random secrets, kept when they exist: the signing key the demo's upstreams verify with,
    // the HMAC key of `config/gateway.yaml`'s dev token key (`dev-hs`), an admin token.
    for name in ["signing.key", "jwt-hs.key", "admin-token"] {
        let path = out.join(name);
        if !path.exists() {
            let mut secret = [0u8; 32];
            aws_lc_rs::rand::fill(&mut secret).map_err(|_| io::Error::other("no system RNG"))?;
            let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
            write_secret(&path, hex.as_bytes())?;
        }
    }
    Ok(DevCerts {
        ca_cert: out.join("ca.crt"),
        default_cert,
        default_key,
        tenants: out_tenants,
    })
}

fn write_file(path: &Path, data: &[u8]) -> io::Result<()> {
    fs::write(path, data)
}

/// Writes a file readable by its owner only.
fn write_secret(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}
