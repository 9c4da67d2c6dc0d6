//! The self-signed certificate: made once with rcgen for localhost, the host name and
//! the configured names, kept in the store (private key encrypted with the keyring) so it
//! stays the same across restarts, and renewed when names change or expiry nears.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};

use crate::crypto::Keyring;
use crate::crypto::sealed::{self, Secret};
use crate::store::{Store, StoreError};

const RECORD: &str = "tls.self_signed";
const VALID_DAYS: i64 = 397;
const RENEW_BEFORE_DAYS: i64 = 30;

#[derive(Serialize, Deserialize)]
struct StoredCert {
    names: Vec<String>,
    cert_der: String,
    key_sealed: String,
    not_after: i64,
}

/// The certificate in use, swappable for new connections.
#[derive(Debug)]
pub struct CertSlot {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertSlot {
    pub fn new(cert: Arc<CertifiedKey>) -> Arc<CertSlot> {
        Arc::new(CertSlot { current: RwLock::new(cert) })
    }

    /// Serves `cert` to every connection from now on.
    pub fn replace(&self, cert: Arc<CertifiedKey>) {
        if let Ok(mut cur) = self.current.write() {
            *cur = cert;
        }
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

/// A certificate with its public parts, as made or loaded.
pub struct SelfSigned {
    pub certified: Arc<CertifiedKey>,
    pub cert_der: Vec<u8>,
    pub names: Vec<String>,
    pub created: bool,
}

impl SelfSigned {
    /// PEM of the certificate (public), so users can trust or pin it.
    pub fn cert_pem(&self) -> String {
        let b64 = B64.encode(&self.cert_der);
        let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        pem
    }
}

/// Errors while making or loading the certificate.
#[derive(Debug, thiserror::Error)]
pub enum SelfSignedError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot make the self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the stored self-signed certificate cannot be read: {0}")]
    Record(#[from] serde_json::Error),
    #[error("the stored self-signed certificate cannot be read: {0}")]
    Encoding(#[from] base64::DecodeError),
    #[error("the self-signed certificate's private key: {0}")]
    Sealed(#[from] crate::crypto::sealed::SealedError),
    #[error("the self-signed certificate's private key is unusable: {0}")]
    Key(#[from] rustls::Error),
}

/// The names the certificate covers: localhost, loopback addresses, this host's name,
/// the listener's address (when specific) and the configured names.
pub fn default_names(listen: IpAddr, extra: &[String]) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim().to_ascii_lowercase();
        if !host.is_empty() && host != "localhost" {
            names.push(host);
        }
    }
    if !listen.is_unspecified() && !listen.is_loopback() {
        names.push(listen.to_string());
    }
    for name in extra {
        names.push(name.trim().to_ascii_lowercase());
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// Where the private key is sealed (a field of the certificate record).
const SECRET: Secret<'static> = Secret::new("private_key", RECORD);

/// Loads the stored certificate when it covers `names` and is not near expiry; otherwise
/// makes a new one and stores it.
pub async fn load_or_create(
    store: &Store,
    keyring: &Keyring,
    names: Vec<String>,
) -> Result<SelfSigned, SelfSignedError> {
    let stored = store.get_secret(RECORD)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if let Some(bytes) = stored {
        let rec: StoredCert = serde_json::from_slice(&bytes)?;
        let mut want = names.clone();
        want.sort();
        let mut have = rec.names.clone();
        have.sort();
        if want == have && rec.not_after - now > RENEW_BEFORE_DAYS * 86_400 {
            let cert_der = B64.decode(&rec.cert_der)?;
            let key_der = sealed::open(keyring, &SECRET, &rec.key_sealed)?;
            let certified = certified_key(&cert_der, &key_der)?;
            return Ok(SelfSigned { certified, cert_der, names: rec.names, created: false });
        }
    }
    let (cert_der, key_der, not_after) = generate(&names)?;
    let key_sealed = sealed::seal(keyring, &SECRET, &key_der)?;
    let rec = StoredCert { names: names.clone(), cert_der: B64.encode(&cert_der), key_sealed, not_after };
    let bytes = serde_json::to_vec(&rec)?;
    store.put_secret(RECORD, bytes).await?;
    let certified = certified_key(&cert_der, &key_der)?;
    Ok(SelfSigned { certified, cert_der, names, created: true })
}

/// (certificate DER, private key PKCS#8 DER, not-after as a Unix time)
type Generated = (Vec<u8>, zeroize::Zeroizing<Vec<u8>>, i64);

fn generate(names: &[String]) -> Result<Generated, SelfSignedError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    for name in names {
        let san = match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(name.clone().try_into()?),
        };
        params.subject_alt_names.push(san);
    }
    params.distinguished_name.push(DnType::CommonName, "miauflix-gate self-signed");
    params.distinguished_name.push(DnType::OrganizationName, "miauflix-gate");
    // An end-entity certificate, so clients may pin it directly as their only trust anchor.
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(VALID_DAYS);
    let mut serial = crate::crypto::random_bytes::<16>();
    serial[0] &= 0x7f; // a positive DER integer
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let cert = params.self_signed(&key)?;
    Ok((cert.der().to_vec(), zeroize::Zeroizing::new(key.serialize_der()), params.not_after.unix_timestamp()))
}

fn certified_key(cert_der: &[u8], key_der: &[u8]) -> Result<Arc<CertifiedKey>, SelfSignedError> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der.to_vec()));
    let signing = crate::crypto::sign::tls_signing_key(&key)?;
    Ok(Arc::new(CertifiedKey::new(vec![CertificateDer::from(cert_der.to_vec())], signing)))
}

/// The data key id the stored private key is sealed with (for `keys retire`).
pub fn sealed_key_id(store: &Store) -> Result<Option<u32>, SelfSignedError> {
    let Some(bytes) = store.get_secret(RECORD)? else { return Ok(None) };
    let rec: StoredCert = serde_json::from_slice(&bytes)?;
    Ok(Some(sealed::key_id(&SECRET, &rec.key_sealed)?))
}

/// Re-encrypts the stored private key with the keyring's active key (after a key rotation).
pub async fn reencrypt(store: &Store, keyring: &Keyring) -> Result<bool, SelfSignedError> {
    let stored = store.get_secret(RECORD)?;
    let Some(bytes) = stored else { return Ok(false) };
    let mut rec: StoredCert = serde_json::from_slice(&bytes)?;
    rec.key_sealed = sealed::reseal(keyring, &SECRET, &rec.key_sealed)?;
    let bytes = serde_json::to_vec(&rec)?;
    store.put_secret(RECORD, bytes).await?;
    Ok(true)
}
