//! Opening the byte stream a URL names: TCP, TLS, WebSocket, or WebSocket over TLS.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rallymq_websocket::tokio::{ByteStream, connect};
use rallymq_websocket::{ClientRequest, Config};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::Error;
use crate::options::TlsOptions;
use crate::url::{BrokerUrl, Scheme};

/// WebSocket subprotocol offered to the broker (MQTT-6.0.0-3).
const SUBPROTOCOL: &str = "mqtt";

type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// A connected transport: MQTT bytes in, MQTT bytes out.
pub(crate) enum Transport {
    Tcp(TcpStream),
    Tls(Box<TlsStream>),
    WebSocket(Box<ByteStream<TcpStream>>),
    WebSocketTls(Box<ByteStream<TlsStream>>),
}

/// The TLS configuration: the caller's, or one trusting `ca_file` or the system's roots.
pub(crate) fn tls_config(tls: &TlsOptions) -> Result<Arc<rustls::ClientConfig>, Error> {
    if let Some(config) = &tls.config {
        return Ok(config.clone());
    }
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            let bad = |e: &dyn std::fmt::Display| {
                Error::InvalidArgument(format!("{}: {e}", path.display()))
            };
            for certificate in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
                roots
                    .add(certificate.map_err(|e| bad(&e))?)
                    .map_err(|e| bad(&e))?;
            }
        }
        None => {
            for certificate in rustls_native_certs::load_native_certs().certs {
                // A system root rustls cannot use is skipped, as browsers do.
                let _ = roots.add(certificate);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_error = |e: &dyn std::fmt::Display| Error::InvalidArgument(format!("TLS: {e}"));
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(&e))?;
    let builder = if tls.skip_host_name_verification {
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| tls_error(&e))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyHostName(verifier)))
    } else {
        builder.with_root_certificates(roots)
    };
    let config = match &tls.client_certificate {
        Some((certificate_file, key_file)) => {
            let bad = |path: &std::path::Path, e: &dyn std::fmt::Display| {
                Error::InvalidArgument(format!("{}: {e}", path.display()))
            };
            let chain = CertificateDer::pem_file_iter(certificate_file)
                .map_err(|e| bad(certificate_file, &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(certificate_file, &e))?;
            let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| bad(key_file, &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad(certificate_file, &e))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Verifies the broker's certificate as rustls does, but for its host name
/// ([`TlsOptions::skip_host_name_verification`]).
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .verify_tls12_signature(message, certificate, signature)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .verify_tls13_signature(message, certificate, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

async fn tls(tcp: TcpStream, url: &BrokerUrl, options: &TlsOptions) -> Result<TlsStream, Error> {
    let connector = tokio_rustls::TlsConnector::from(tls_config(options)?);
    let name =
        ServerName::try_from(url.host.clone()).map_err(|e| Error::InvalidUrl(e.to_string()))?;
    Ok(connector.connect(name, tcp).await?)
}

async fn websocket<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    url: &BrokerUrl,
) -> Result<ByteStream<S>, Error> {
    let request = ClientRequest::new(&url.authority(), &url.path)
        .and_then(|request| request.with_subprotocols(&[SUBPROTOCOL]))
        .map_err(|e| Error::InvalidUrl(e.to_string()))?;
    let (ws, response) = connect(io, &request, Config::default()).await?;
    if response.subprotocol() != Some(SUBPROTOCOL) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the server did not accept the mqtt subprotocol",
        )
        .into());
    }
    Ok(ws.into_byte_stream())
}

pub(crate) async fn open(url: &BrokerUrl, options: &TlsOptions) -> Result<Transport, Error> {
    let tcp = TcpStream::connect(url.authority()).await?;
    let _ = tcp.set_nodelay(true);
    Ok(match url.scheme {
        Scheme::Mqtt => Transport::Tcp(tcp),
        Scheme::Mqtts => Transport::Tls(Box::new(tls(tcp, url, options).await?)),
        Scheme::Ws => Transport::WebSocket(Box::new(websocket(tcp, url).await?)),
        Scheme::Wss => Transport::WebSocketTls(Box::new(
            websocket(tls(tcp, url, options).await?, url).await?,
        )),
    })
}

macro_rules! each {
    ($self:ident, $io:ident => $call:expr) => {
        match $self.get_mut() {
            Transport::Tcp($io) => {
                let $io = Pin::new($io);
                $call
            }
            Transport::Tls($io) => {
                let $io = Pin::new($io.as_mut());
                $call
            }
            Transport::WebSocket($io) => {
                let $io = Pin::new($io.as_mut());
                $call
            }
            Transport::WebSocketTls($io) => {
                let $io = Pin::new($io.as_mut());
                $call
            }
        }
    };
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        each!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        each!(self, io => io.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each!(self, io => io.poll_shutdown(cx))
    }
}
