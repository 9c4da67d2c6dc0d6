//! What the main listener serves right now, for `/api/tls`, `/readyz`, the dashboard and
//! the `tls_certificate_expiry_seconds` metric.

use std::sync::Mutex;

use x509_parser::prelude::*;

/// Facts about one certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertFacts {
    pub names: Vec<String>,
    pub issuer: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// SHA-256 of the DER, colon-separated hex.
    pub fingerprint: String,
    /// Serial number, hex.
    pub serial: String,
}

impl CertFacts {
    /// Reads the facts of a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<CertFacts, super::CertError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(super::CertError::NotX509)?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::DNSName(d) => names.push(d.to_string()),
                    GeneralName::IPAddress(ip) => match ip.len() {
                        4 => names.push(std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string()),
                        16 => {
                            let mut b = [0u8; 16];
                            b.copy_from_slice(ip);
                            names.push(std::net::Ipv6Addr::from(b).to_string())
                        }
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        Ok(CertFacts {
            names,
            issuer: cert.issuer().to_string(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            fingerprint: super::fingerprint(der),
            serial: cert.raw_serial_as_string().replace(':', ""),
        })
    }
}

/// The listener's TLS state.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    /// `self-signed`, `acme`, `manual` or `off`.
    pub mode: String,
    /// What is served now: `self-signed`, `acme`, `acme-pending` (self-signed until the
    /// first certificate arrives), `manual` or `off`.
    pub source: String,
    pub cert: Option<CertFacts>,
    /// Unix seconds of the last issuance or renewal attempt, and its error if it failed.
    pub last_attempt: Option<i64>,
    pub last_error: Option<String>,
    /// When a renewal is due (Unix seconds), for ACME.
    pub renew_at: Option<i64>,
}

/// Shared, updated by the certificate owners (ACME driver, manual watcher).
#[derive(Debug, Default)]
pub struct TlsStatus {
    inner: Mutex<TlsInfo>,
}

impl TlsStatus {
    pub fn new(mode: &str, source: &str, cert: Option<CertFacts>) -> TlsStatus {
        TlsStatus {
            inner: Mutex::new(TlsInfo { mode: mode.into(), source: source.into(), cert, ..Default::default() }),
        }
    }

    pub fn get(&self) -> TlsInfo {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut TlsInfo)) {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Seconds until the served certificate expires.
    pub fn expires_in(&self) -> Option<i64> {
        let now = crate::clock::now();
        self.get().cert.map(|c| c.not_after - now)
    }
}
