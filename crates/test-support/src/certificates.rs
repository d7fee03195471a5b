//! Certificates made for a test: a CA, and certificates it signs for localhost, as PEM files
//! in a directory of their own.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};

/// A CA made for the test, and certificates it signs, as PEM files in a directory of their
/// own (removed when dropped).
pub struct Certificates {
    /// The directory the files are written to.
    pub dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Certificates {
    /// A new CA whose Common Name says `name`, in a new temporary directory.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("rallymq-tls-{name}-{}", crate::run_id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("rallymq test CA {name}"));
        let key = KeyPair::generate().expect("a key");
        let ca = CertifiedIssuer::self_signed(params, key).expect("a CA certificate");
        Self { dir, ca }
    }

    /// Writes `pem` to the file `name` in the directory; its path.
    pub fn write(&self, name: &str, pem: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, pem).expect("a PEM file is written");
        path
    }

    /// Writes the CA's certificate to `name`; its path.
    pub fn ca_file(&self, name: &str) -> PathBuf {
        self.write(name, &self.ca.pem())
    }

    /// A certificate for localhost and 127.0.0.1 with Common Name `name`: the paths of its
    /// certificate and key files.
    pub fn leaf(&self, name: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("a key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned()]).expect("certificate parameters");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.distinguished_name.push(DnType::CommonName, name);
        let certificate = params
            .signed_by(&key, &self.ca)
            .expect("a signed certificate");
        (
            self.write(&format!("{name}.pem"), &certificate.pem()),
            self.write(&format!("{name}.key"), &key.serialize_pem()),
        )
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
