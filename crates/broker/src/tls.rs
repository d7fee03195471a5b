//! TLS for the `mqtts://` and `wss://` listeners: rustls, with the certificate chain and key
//! read from PEM files and read again when they change or on request, so that a renewal (Let's
//! Encrypt's, every 60 days) needs no restart; connections already open keep their session.
//! A client certificate, when asked for, is verified against a CA file, and its name can stand
//! for the client's user name.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::Error;

/// The files of the TLS listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The certificate chain, PEM (the server's certificate first).
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates, PEM, that client certificates are verified against; without it no
    /// listener asks for one.
    pub client_ca: Option<PathBuf>,
    /// Which name of a client certificate is the client's user name.
    pub certificate_name: CertificateName,
}

/// Which name of a verified client certificate identifies the client (Mosquitto's
/// `use_identity_as_username` takes the Common Name).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertificateName {
    /// The subject's Common Name.
    #[default]
    CommonName,
    /// The first Subject Alternative Name that is a DNS name or an e-mail address.
    SubjectAltName,
}

/// Whether a TLS listener asks clients for a certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientCertificates {
    /// Not asked for.
    #[default]
    NotAsked,
    /// Asked for and verified when given; clients without one are let in (to log in otherwise).
    Optional,
    /// Required: a client without a valid certificate fails the handshake.
    Required,
}

/// The server configurations, one per way of asking for client certificates.
#[derive(Debug)]
struct Configs {
    not_asked: Arc<ServerConfig>,
    /// `None` without a client CA.
    optional: Option<Arc<ServerConfig>>,
    required: Option<Arc<ServerConfig>>,
}

/// The TLS configuration in force, and what it was read from.
#[derive(Debug)]
pub(crate) struct Tls {
    settings: TlsSettings,
    configs: RwLock<Arc<Configs>>,
    /// The modification times of the files when they were last read.
    read_at: Mutex<Vec<Option<SystemTime>>>,
}

fn tls_error(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Tls(format!("{}: {what}", path.display()))
}

impl Tls {
    /// Reads the files; fails with a message naming the file at fault.
    pub(crate) fn load(settings: TlsSettings) -> Result<Self, Error> {
        let read_at = stamps(&settings);
        let configs = build(&settings)?;
        Ok(Self {
            settings,
            configs: RwLock::new(Arc::new(configs)),
            read_at: Mutex::new(read_at),
        })
    }

    /// Reads the files again; on failure keeps the configuration in force and says why.
    pub(crate) fn reload(&self) -> Result<(), Error> {
        let read_at = stamps(&self.settings);
        let configs = build(&self.settings)?;
        *self
            .configs
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(configs);
        *crate::lock(&self.read_at) = read_at;
        Ok(())
    }

    /// Whether a file changed (or appeared, or went) since it was last read.
    pub(crate) fn changed_on_disk(&self) -> bool {
        *crate::lock(&self.read_at) != stamps(&self.settings)
    }

    /// The acceptor for a listener that asks for client certificates as `asking` says (as if
    /// not asked when no client CA is configured).
    pub(crate) fn acceptor(&self, asking: ClientCertificates) -> TlsAcceptor {
        let configs = self
            .configs
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let config = match asking {
            ClientCertificates::NotAsked => None,
            ClientCertificates::Optional => configs.optional.clone(),
            ClientCertificates::Required => configs.required.clone(),
        };
        TlsAcceptor::from(config.unwrap_or_else(|| configs.not_asked.clone()))
    }

    /// The user name a verified client certificate stands for, if the handshake had one.
    pub(crate) fn certificate_user(&self, connection: &rustls::ServerConnection) -> Option<String> {
        let certificate = connection.peer_certificates()?.first()?;
        certificate_name(certificate, self.settings.certificate_name)
    }
}

fn stamps(settings: &TlsSettings) -> Vec<Option<SystemTime>> {
    [
        Some(&settings.cert),
        Some(&settings.key),
        settings.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
    .collect()
}

fn build(settings: &TlsSettings) -> Result<Configs, Error> {
    let chain = CertificateDer::pem_file_iter(&settings.cert)
        .map_err(|e| tls_error(&settings.cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(&settings.cert, e))?;
    if chain.is_empty() {
        return Err(tls_error(&settings.cert, "no certificate in the file"));
    }
    let key =
        PrivateKeyDer::from_pem_file(&settings.key).map_err(|e| tls_error(&settings.key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = || {
        ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))
    };
    let finish = |config: Result<ServerConfig, rustls::Error>| {
        config
            .map(Arc::new)
            .map_err(|e| tls_error(&settings.key, e))
    };
    let not_asked = finish(
        builder()?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key()),
    )?;
    let (optional, required) = match &settings.client_ca {
        None => (None, None),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in CertificateDer::pem_file_iter(ca).map_err(|e| tls_error(ca, e))? {
                roots
                    .add(certificate.map_err(|e| tls_error(ca, e))?)
                    .map_err(|e| tls_error(ca, e))?;
            }
            let roots = Arc::new(roots);
            let verifier = |optional: bool| {
                let builder =
                    WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
                let builder = if optional {
                    builder.allow_unauthenticated()
                } else {
                    builder
                };
                builder.build().map_err(|e| tls_error(ca, e))
            };
            let optional = finish(
                builder()?
                    .with_client_cert_verifier(verifier(true)?)
                    .with_single_cert(chain.clone(), key.clone_key()),
            )?;
            let required = finish(
                builder()?
                    .with_client_cert_verifier(verifier(false)?)
                    .with_single_cert(chain, key),
            )?;
            (Some(optional), Some(required))
        }
    };
    Ok(Configs {
        not_asked,
        optional,
        required,
    })
}

/// The name of a certificate, as `which` says.
fn certificate_name(certificate: &CertificateDer<'_>, which: CertificateName) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
    match which {
        CertificateName::CommonName => parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|name| name.as_str().ok())
            .map(str::to_owned),
        CertificateName::SubjectAltName => {
            let names = parsed.subject_alternative_name().ok()??;
            names
                .value
                .general_names
                .iter()
                .find_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(name)
                    | x509_parser::extensions::GeneralName::RFC822Name(name) => {
                        Some((*name).to_owned())
                    }
                    _ => None,
                })
        }
    }
}
