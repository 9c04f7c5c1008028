//! The keys of one move: a certificate authority made for it, a server certificate for the
//! source's mover and a client certificate for the destinations' movers, so that only the
//! movers of that move can talk to each other (mutual TLS), and nothing else can read the data
//! on the way. The operator makes them per move and deletes them after it.

use std::path::Path;
use std::sync::Arc;

use super::Error;

/// The name the source's certificate is issued for and the destinations check.
pub const SERVER_NAME: &str = "residency-mover";

/// The PEM files of one move's keys.
#[derive(Clone, Debug)]
pub struct MoveKeys {
    /// The move's certificate authority (certificate only; its key is dropped).
    pub ca: String,
    /// The source's certificate and key.
    pub server_cert: String,
    /// The source's key.
    pub server_key: String,
    /// The destinations' certificate.
    pub client_cert: String,
    /// The destinations' key.
    pub client_key: String,
}

/// File names in a key directory (as mounted from a Secret).
pub const FILES: [&str; 5] = [
    "ca.crt",
    "server.crt",
    "server.key",
    "client.crt",
    "client.key",
];

impl MoveKeys {
    /// New keys for one move (ECDSA P-256, valid for 7 days).
    pub fn generate() -> Result<MoveKeys, Error> {
        let tls = |e: rcgen::Error| Error::Tls(e.to_string());
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "residency-mover move CA");
        validity(&mut ca_params);
        let ca_key = rcgen::KeyPair::generate().map_err(tls)?;
        let ca = ca_params.self_signed(&ca_key).map_err(tls)?;
        let leaf = |name: &str,
                    usage: rcgen::ExtendedKeyUsagePurpose|
         -> Result<(String, String), Error> {
            let mut p = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(tls)?;
            p.distinguished_name.push(rcgen::DnType::CommonName, name);
            p.extended_key_usages = vec![usage];
            validity(&mut p);
            let key = rcgen::KeyPair::generate().map_err(tls)?;
            let cert = p.signed_by(&key, &ca, &ca_key).map_err(tls)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) =
            leaf(SERVER_NAME, rcgen::ExtendedKeyUsagePurpose::ServerAuth)?;
        let (client_cert, client_key) = leaf(
            "residency-mover-destination",
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        Ok(MoveKeys {
            ca: ca.pem(),
            server_cert,
            server_key,
            client_cert,
            client_key,
        })
    }

    /// Writes the five PEM files into `dir` (keys readable by the owner only).
    pub fn write(&self, dir: &Path) -> Result<(), Error> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        for (name, body) in FILES.iter().zip([
            &self.ca,
            &self.server_cert,
            &self.server_key,
            &self.client_cert,
            &self.client_key,
        ]) {
            let path = dir.join(name);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            std::io::Write::write_all(&mut f, body.as_bytes()).map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    }
}

/// Valid from yesterday to a week from now (UTC midnights).
fn validity(p: &mut rcgen::CertificateParams) {
    use k8s_openapi::jiff::{Span, Timestamp, tz::TimeZone};
    let today = Timestamp::now().to_zoned(TimeZone::UTC);
    let day = |z: &k8s_openapi::jiff::Zoned| {
        rcgen::date_time_ymd(
            i32::from(z.year()),
            u8::try_from(z.month()).unwrap_or(1),
            u8::try_from(z.day()).unwrap_or(1),
        )
    };
    if let Ok(before) = today.checked_sub(Span::new().days(1)) {
        p.not_before = day(&before);
    }
    if let Ok(after) = today.checked_add(Span::new().days(7)) {
        p.not_after = day(&after);
    }
}

fn certs(pem: &str) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, Error> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("certificate: {e}")))
}

fn key(pem: &str) -> Result<rustls::pki_types::PrivateKeyDer<'static>, Error> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| Error::Tls(format!("key: {e}")))
}

fn roots(ca: &str) -> Result<rustls::RootCertStore, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca)? {
        roots.add(c).map_err(|e| Error::Tls(format!("CA: {e}")))?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads the PEM files of a key directory; a file that is not there reads as empty (a source
/// holds only the CA and its own certificate and key, a destination the CA and its own).
pub fn read(dir: &Path) -> Result<MoveKeys, Error> {
    let f = |name: &str| {
        let p = dir.join(name);
        match std::fs::read_to_string(&p) {
            Ok(s) => Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(Error::io(&p, e)),
        }
    };
    Ok(MoveKeys {
        ca: f("ca.crt")?,
        server_cert: f("server.crt")?,
        server_key: f("server.key")?,
        client_cert: f("client.crt")?,
        client_key: f("client.key")?,
    })
}

impl MoveKeys {
    /// The files a source needs: `ca.crt`, `server.crt`, `server.key`.
    pub fn source_files(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ca.crt", self.ca.clone()),
            ("server.crt", self.server_cert.clone()),
            ("server.key", self.server_key.clone()),
        ]
    }

    /// The files a destination needs: `ca.crt`, `client.crt`, `client.key`.
    pub fn destination_files(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ca.crt", self.ca.clone()),
            ("client.crt", self.client_cert.clone()),
            ("client.key", self.client_key.clone()),
        ]
    }
}

/// The source's TLS: its certificate, and only clients with a certificate of the move's CA.
pub fn server_config(keys: &MoveKeys) -> Result<Arc<rustls::ServerConfig>, Error> {
    let tls = |e: rustls::Error| Error::Tls(e.to_string());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(&keys.ca)?),
        provider(),
    )
    .build()
    .map_err(|e| Error::Tls(e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&keys.server_cert)?, key(&keys.server_key)?)
        .map_err(tls)?;
    Ok(Arc::new(config))
}

/// A destination's TLS: the source must show a certificate of the move's CA for
/// [`SERVER_NAME`]; it shows its own.
pub fn client_config(keys: &MoveKeys) -> Result<Arc<rustls::ClientConfig>, Error> {
    let tls = |e: rustls::Error| Error::Tls(e.to_string());
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_root_certificates(roots(&keys.ca)?)
        .with_client_auth_cert(certs(&keys.client_cert)?, key(&keys.client_key)?)
        .map_err(tls)?;
    Ok(Arc::new(config))
}
