//! TLS material for QUIC endpoints.
//!
//! Servers take a certificate chain and key from PEM files (`--tls-cert`, `--tls-key`) or, in
//! development, generate a CA and a server certificate signed by it into `<data-dir>/tls/`
//! (kept across restarts, so a client's trusted `ca.pem` stays valid).
//!
//! Clients trust either CA roots from a PEM file (`--tls-ca` / `STRATA_TLS_CA`) or, only when
//! the server address is a loopback address, the development trust: the server's certificate
//! is not checked against a CA (there is no other host to impersonate it on loopback), the
//! handshake signatures still are, and the client says so in a warning. A non-loopback address
//! without a CA is refused: verification is never skipped silently.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::TransportError;

/// Installs rustls's aws-lc-rs provider as the process default. Call it first in `main` and in
/// tests; calling it again is harmless. (Mixing in the ring provider makes rustls panic.)
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A server's certificate chain and private key.
#[derive(Debug)]
pub struct ServerTls {
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for ServerTls {
    fn clone(&self) -> Self {
        Self {
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// Paths of the development CA and server certificate inside a TLS directory.
#[derive(Debug, Clone)]
pub struct DevTlsPaths {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl DevTlsPaths {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        }
    }
}

impl ServerTls {
    /// Loads a PEM certificate chain and a PEM private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TransportError> {
        let cert_chain = read_certs(cert)?;
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| TransportError::Tls(format!("{}: {e}", key.display())))?;
        Ok(Self { cert_chain, key })
    }

    /// Loads the development certificate from `dir`, generating a CA and a server certificate
    /// for `localhost`, `127.0.0.1`, `::1` and `extra_names` the first time.
    pub fn dev_in_dir(
        dir: &Path,
        extra_names: &[String],
    ) -> Result<(Self, DevTlsPaths), TransportError> {
        let paths = DevTlsPaths::in_dir(dir);
        if !(paths.ca_cert.exists() && paths.server_cert.exists() && paths.server_key.exists()) {
            generate_dev_material(&paths, extra_names)?;
        }
        Ok((
            Self::from_pem_files(&paths.server_cert, &paths.server_key)?,
            paths,
        ))
    }
}

fn generate_dev_material(
    paths: &DevTlsPaths,
    extra_names: &[String],
) -> Result<(), TransportError> {
    let tls_err =
        |e: rcgen::Error| TransportError::Tls(format!("generating development certificate: {e}"));
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Strata development CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_key = rcgen::KeyPair::generate().map_err(tls_err)?;
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(tls_err)?;

    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    names.extend(extra_names.iter().cloned());
    let mut params = rcgen::CertificateParams::new(names).map_err(tls_err)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "strata");
    let key = rcgen::KeyPair::generate().map_err(tls_err)?;
    let cert = params.signed_by(&key, &ca).map_err(tls_err)?;

    if let Some(dir) = paths.ca_cert.parent() {
        std::fs::create_dir_all(dir).map_err(|source| io_err(dir, source))?;
    }
    write_private(&paths.server_key, key.serialize_pem().as_bytes())?;
    write_file(&paths.server_cert, cert.pem().as_bytes())?;
    // Written last: its presence means the set is complete.
    write_file(&paths.ca_cert, ca.as_ref().pem().as_bytes())?;
    Ok(())
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), TransportError> {
    std::fs::write(path, data).map_err(|source| io_err(path, source))
}

/// Writes a private key readable by its owner only (mode 0600 on Unix): it also keys the
/// endpoint's stateless resets.
fn write_private(path: &Path, data: &[u8]) -> Result<(), TransportError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|source| io_err(path, source))?;
    file.write_all(data).map_err(|source| io_err(path, source))
}

fn io_err(path: &Path, source: std::io::Error) -> TransportError {
    TransportError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    if !path.exists() {
        return Err(io_err(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        ));
    }
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TransportError::Tls(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TransportError::Tls(format!(
            "{}: no certificate in file",
            path.display()
        )));
    }
    Ok(certs)
}

/// What a client trusts.
#[derive(Debug, Clone)]
pub enum ClientTrust {
    /// Verify the server against these CA certificates.
    Roots(Vec<CertificateDer<'static>>),
    /// Development trust for loopback servers (see the module docs).
    LoopbackDev,
}

impl ClientTrust {
    pub fn from_ca_file(path: &Path) -> Result<Self, TransportError> {
        Ok(Self::Roots(read_certs(path)?))
    }

    /// Chooses the trust for a server at `host`: the CA file if given; else the development
    /// trust if `host` is a loopback address; else an error that says to pass a CA.
    pub fn resolve(ca_file: Option<&Path>, host: &str) -> Result<Self, TransportError> {
        match ca_file {
            Some(path) => Self::from_ca_file(path),
            None if is_loopback(host) => Ok(Self::LoopbackDev),
            None => Err(TransportError::Tls(format!(
                "no CA certificate given for non-loopback server {host}: pass --tls-ca or set STRATA_TLS_CA"
            ))),
        }
    }

    pub(crate) fn rustls_config(
        &self,
        alpn: &[u8],
    ) -> Result<rustls::ClientConfig, TransportError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut config = match self {
            ClientTrust::Roots(roots) => {
                let mut store = rustls::RootCertStore::empty();
                for cert in roots {
                    store
                        .add(cert.clone())
                        .map_err(|e| TransportError::Tls(format!("bad CA certificate: {e}")))?;
                }
                builder.with_root_certificates(store).with_no_client_auth()
            }
            ClientTrust::LoopbackDev => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(LoopbackDevVerifier {
                    provider: provider(),
                }))
                .with_no_client_auth(),
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(config)
    }
}

/// True for `localhost` and loopback IP addresses.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Accepts the server's certificate without a CA, but only for loopback server names, and
/// still checks that the server holds the certificate's key.
#[derive(Debug)]
struct LoopbackDevVerifier {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for LoopbackDevVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let loopback = match server_name {
            ServerName::IpAddress(ip) => IpAddr::from(*ip).is_loopback(),
            ServerName::DnsName(name) => name.as_ref().eq_ignore_ascii_case("localhost"),
            _ => false,
        };
        if loopback {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "development trust is only for loopback servers; pass --tls-ca".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_detection_covers_names_and_addresses() {
        for h in ["localhost", "127.0.0.1", "127.5.5.5", "::1", "[::1]"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["10.0.0.1", "example.com", "0.0.0.0"] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    /// A non-loopback server with no CA configured is refused, never trusted silently.
    #[test]
    fn non_loopback_without_ca_is_an_error() {
        let err = ClientTrust::resolve(None, "10.1.2.3").expect_err("must refuse");
        assert!(err.to_string().contains("--tls-ca"), "{err}");
        assert!(matches!(
            ClientTrust::resolve(None, "127.0.0.1"),
            Ok(ClientTrust::LoopbackDev)
        ));
    }

    /// The development material is generated once and reused, so a trusted ca.pem stays valid.
    #[test]
    fn dev_certificate_is_generated_once_and_reused() {
        install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, paths) = ServerTls::dev_in_dir(dir.path(), &[]).expect("generate");
        let ca_before = std::fs::read(&paths.ca_cert).expect("ca written");
        let (second, _) = ServerTls::dev_in_dir(dir.path(), &[]).expect("reload");
        assert_eq!(first.cert_chain, second.cert_chain);
        assert_eq!(std::fs::read(&paths.ca_cert).expect("ca"), ca_before);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&paths.server_key)
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(
                mode & 0o077,
                0,
                "the private key is the owner's only: {mode:o}"
            );
        }
        assert!(ClientTrust::from_ca_file(&paths.ca_cert).is_ok());
    }
}
