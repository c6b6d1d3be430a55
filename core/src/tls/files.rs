//! Reading the PEM files of `security.tls`: every failure names the field and the file, and
//! says what was expected in it.

use std::path::Path;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A `security.tls` field whose setting or file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("security.tls.{field}: {problem}")]
pub struct TlsError {
    /// The field at fault (`certFile`, `keyFile`, `caFile`, …).
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl TlsError {
    /// A problem with `field`.
    pub(crate) fn new(field: &'static str, problem: impl Into<String>) -> TlsError {
        TlsError {
            field,
            problem: problem.into(),
        }
    }

    /// The field's full JSON path.
    pub fn field(&self) -> String {
        format!("security.tls.{}", self.field)
    }
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path)
        .map_err(|e| TlsError::new(field, format!("cannot read {}: {e}", path.display())))
}

/// The certificates of a PEM file (at least one).
pub(crate) fn certificates(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(field, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(field, format!("{} is not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        let msg = format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        );
        return Err(TlsError::new(field, msg));
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub(crate) fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let field = "keyFile";
    let pem = read(field, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        let problem = match e {
            rustls_pki_types::pem::Error::NoItemsFound => format!(
                "{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
                path.display()
            ),
            e => format!("{} is not a valid PEM private key: {e}", path.display()),
        };
        TlsError::new(field, problem)
    })
}

/// The trust anchors of `caFile`, or the public roots without one.
pub(crate) fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let Some(path) = ca_file else {
        return Ok(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
    };
    let mut store = RootCertStore::empty();
    for cert in certificates("caFile", path)? {
        store.add(cert).map_err(|e| {
            let msg = format!("{} holds a certificate that is no CA: {e}", path.display());
            TlsError::new("caFile", msg)
        })?;
    }
    Ok(store)
}
