//! TLS termination with rustls: certificates chosen by SNI (exact names,
//! then `*.suffix`, then the listener's first certificate), TLS 1.2 and
//! 1.3, ALPN `h2` and `http/1.1`. The certificates of a listener sit
//! behind an `ArcSwap`, so a reload replaces them for new connections while
//! open ones carry on.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::TlsConfig;

/// The certificates of one listener.
#[derive(Debug)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// (`.suffix`, key), longest suffix first.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
}

impl CertStore {
    /// Loads a listener's certificates (already checked by config
    /// validation, so errors here are unexpected but reported).
    pub fn new(config: &TlsConfig) -> Result<CertStore, String> {
        let provider = rustls::crypto::ring::default_provider();
        let mut exact = HashMap::new();
        let mut wildcard = Vec::new();
        let mut default = None;
        for certificate in &config.certificates {
            let chain: Vec<CertificateDer<'static>> = certificate
                .chain
                .iter()
                .map(|der| CertificateDer::from(der.clone()))
                .collect();
            let key = PrivateKeyDer::from_pem_slice(&certificate.key_pem)
                .map_err(|e| format!("{}: {e}", certificate.key_path))?;
            let key = Arc::new(
                CertifiedKey::from_der(chain, key, &provider)
                    .map_err(|e| format!("{}: {e}", certificate.cert_path))?,
            );
            default.get_or_insert_with(|| Arc::clone(&key));
            for name in &certificate.server_names {
                match name.strip_prefix('*') {
                    Some(suffix) => wildcard.push((suffix.to_string(), Arc::clone(&key))),
                    None => {
                        exact
                            .entry(name.clone())
                            .or_insert_with(|| Arc::clone(&key));
                    }
                }
            }
        }
        wildcard.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        Ok(CertStore {
            exact,
            wildcard,
            default: default.ok_or("no certificate")?,
        })
    }

    fn pick(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return Arc::clone(&self.default);
        };
        if let Some(key) = self.exact.get(&name) {
            return Arc::clone(key);
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
            .map_or_else(|| Arc::clone(&self.default), |(_, key)| Arc::clone(key))
    }
}

/// Picks a certificate per handshake from the current [`CertStore`].
#[derive(Debug)]
pub struct Resolver(ArcSwap<CertStore>);

impl Resolver {
    /// A resolver serving `store`.
    pub fn new(store: CertStore) -> Arc<Resolver> {
        Arc::new(Resolver(ArcSwap::from_pointee(store)))
    }

    /// New connections get `store` from now on.
    pub fn replace(&self, store: CertStore) {
        self.0.store(Arc::new(store));
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().pick(client_hello.server_name()))
    }
}

/// The rustls configuration of a TLS listener.
pub fn server_config(resolver: Arc<Resolver>) -> Result<Arc<ServerConfig>, String> {
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS client for a service's instances: trusted roots (the service's
/// CA bundle, or the Mozilla roots), ALPN for the protocol, and the name to
/// verify (the configured one, or the instance IP).
pub fn upstream_connector(
    tls: &crate::config::UpstreamTls,
    protocol: crate::config::UpstreamProtocol,
    address: std::net::SocketAddr,
) -> Result<
    (
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    ),
    String,
> {
    use rustls::pki_types::ServerName;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let mut config = if tls.verify {
        let mut roots = rustls::RootCertStore::empty();
        match &tls.ca_certificates {
            Some(certificates) => {
                for der in certificates {
                    roots
                        .add(CertificateDer::from(der.clone()))
                        .map_err(|e| format!("CA certificate refused: {e}"))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        tracing::warn!(%address, "TLS to this instance is not verified (tls.verify: false)");
        builder
            .dangerous()
            .with_custom_certificate_verifier(accept_any_certificate(provider))
            .with_no_client_auth()
    };
    config.alpn_protocols = match protocol {
        crate::config::UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
        crate::config::UpstreamProtocol::Http2 => vec![b"h2".to_vec()],
    };
    let name = match &tls.server_name {
        Some(name) => {
            ServerName::try_from(name.clone()).map_err(|e| format!("server_name `{name}`: {e}"))?
        }
        None => ServerName::IpAddress(address.ip().into()),
    };
    Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
}

/// A verifier that accepts any server certificate (handshake signatures
/// are still checked): what `tls.verify: false` uses, and what tests use to
/// look at the certificate a listener presents.
pub fn accept_any_certificate(
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Arc<dyn rustls::client::danger::ServerCertVerifier> {
    Arc::new(NoVerification(provider))
}

#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
