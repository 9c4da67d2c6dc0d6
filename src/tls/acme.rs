//! ACME certificates with rustls-acme, cached in the store (private keys sealed by the
//! keyring). The gate serves its self-signed certificate until the first ACME certificate
//! arrives; renewal starts when a third of the lifetime remains (rustls-acme's schedule),
//! with exponential backoff on failure (1 s doubling, capped at 2^16 s ≈ 18 h).

use std::sync::Arc;

use futures_util::StreamExt;
use rustls::sign::CertifiedKey;
use rustls_acme::{AccountCache, CertCache};
use rustls_acme::{EventError, EventOk, ResolvesServerCertAcme, UseChallenge};
use serde::{Deserialize, Serialize};

use super::config::{AcmeChallenge, AcmeConfig};
use super::self_signed::CertSlot;
use super::status::{CertFacts, TlsStatus};
use crate::audit::Audit;
use crate::audit::{ClientInfo, EventKind, SecurityEvent, Severity};
use crate::crypto::Keyring;
use crate::crypto::sealed::{self, Secret};
use crate::store::{Store, StoreError};

/// What the listeners need from ACME: the challenge-aware resolver (for HTTP-01 answers)
/// and the TLS configuration for TLS-ALPN-01 validation connections.
pub struct AcmeParts {
    pub resolver: Arc<ResolvesServerCertAcme>,
    pub challenge_config: Arc<rustls::ServerConfig>,
}

#[derive(Serialize, Deserialize)]
struct StoredCert {
    /// PEM chain, leaf first.
    chain_pem: String,
    /// The PEM private key, sealed.
    key_sealed: String,
}

fn record_name(kind: &str, parts: &[String], directory: &str) -> String {
    let id = crate::crypto::sha256(format!("{}|{directory}", parts.join(",")).as_bytes());
    format!("acme.{kind}.{}", hex::encode(&id[..12]))
}

/// Parses rustls-acme's PEM (private key first, then the chain) into a served certificate.
pub fn parse_bundle(pem: &[u8]) -> Result<(Arc<CertifiedKey>, CertFacts), super::CertError> {
    super::certified_from_pem(pem, pem, "the bundle", "the bundle")
}

/// Where a cached record's private key is sealed: a field of a certificate record, or an
/// account record's whole value (raw, as earlier versions wrote it).
fn secret(name: &str) -> Secret<'_> {
    if name.starts_with("acme.account.") { Secret::raw("private_key", name) } else { Secret::new("private_key", name) }
}

/// Why a cached ACME record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cached ACME key: {0}")]
    Sealed(#[from] crate::crypto::sealed::SealedError),
    #[error("cached ACME record: {0}")]
    Record(#[from] serde_json::Error),
    #[error("the ACME certificate bundle is not PEM text")]
    NotText(#[from] std::str::Utf8Error),
    #[error("the ACME certificate bundle: {0}")]
    Bundle(#[from] super::CertError),
    #[error("the ACME certificate bundle: no certificate in it")]
    NoCertificate,
}

/// Caches rustls-acme's certificate bundle (private key PEM first, then the chain) with the
/// key sealed; what the cache's `store_cert` writes.
pub async fn store_cert_bundle(
    store: &Store,
    keyring: &Keyring,
    domains: &[String],
    directory_url: &str,
    cert: &[u8],
) -> Result<(), CacheError> {
    let name = record_name("cert", domains, directory_url);
    let text = std::str::from_utf8(cert)?;
    let chain_start = text.find("-----BEGIN CERTIFICATE-----").ok_or(CacheError::NoCertificate)?;
    let (key_pem, chain_pem) = text.split_at(chain_start);
    let key_sealed = sealed::seal(keyring, &secret(&name), key_pem.as_bytes())?;
    let rec = StoredCert { chain_pem: chain_pem.to_string(), key_sealed };
    store.put_secret(name, serde_json::to_vec(&rec)?).await?;
    Ok(())
}

/// Caches rustls-acme's account key, sealed; what the cache's `store_account` writes.
pub async fn store_account_key(
    store: &Store,
    keyring: &Keyring,
    contact: &[String],
    directory_url: &str,
    account: &[u8],
) -> Result<(), CacheError> {
    let name = record_name("account", contact, directory_url);
    Ok(sealed::put(store, keyring, &secret(&name), account).await?)
}

/// The names of every cached ACME record.
fn record_names(store: &Store) -> Result<Vec<String>, StoreError> {
    store.read(|txn| {
        let t = txn.open_table(crate::store::tables::SECRETS)?;
        let mut names = Vec::new();
        for row in t.range("acme."..)? {
            let (k, _) = row?;
            if !k.value().starts_with("acme.") {
                break;
            }
            names.push(k.value().to_string());
        }
        Ok(names)
    })
}

/// Every cached ACME record: (name, its sealed key's envelope).
pub fn sealed_entries(store: &Store) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let mut out = Vec::new();
    for name in record_names(store)? {
        if name.starts_with("acme.cert.") {
            let Some(bytes) = store.get_secret(&name)? else { continue };
            let rec: StoredCert = serde_json::from_slice(&bytes)?;
            let env = sealed::envelope(&secret(&name), &rec.key_sealed)?;
            out.push((name, env));
        } else if name.starts_with("acme.account.")
            && let Some(env) = sealed::stored_envelope(store, &secret(&name))?
        {
            out.push((name, env));
        }
    }
    Ok(out)
}

/// Re-seals every cached ACME key with the active data key (key rotation).
pub async fn reencrypt(store: &Store, keyring: &Keyring) -> Result<usize, StoreError> {
    let mut n = 0;
    for name in record_names(store)? {
        if name.starts_with("acme.cert.") {
            let Some(bytes) = store.get_secret(&name)? else { continue };
            let mut rec: StoredCert = serde_json::from_slice(&bytes)?;
            rec.key_sealed = sealed::reseal(keyring, &secret(&name), &rec.key_sealed)?;
            store.put_secret(name, serde_json::to_vec(&rec)?).await?;
            n += 1;
        } else if name.starts_with("acme.account.") && sealed::reseal_record(store, keyring, &secret(&name)).await? {
            n += 1;
        }
    }
    Ok(n)
}

/// The rustls-acme cache: certificates and the account key live in the `secrets` table.
struct StoreCache {
    store: Store,
    keyring: Arc<Keyring>,
    slot: Arc<CertSlot>,
    status: Arc<TlsStatus>,
}

impl StoreCache {
    /// Serves `pem` from now on and records its facts.
    fn install(&self, pem: &[u8]) -> Result<CertFacts, CacheError> {
        let (certified, facts) = parse_bundle(pem)?;
        self.slot.replace(certified);
        let renew_at = facts.not_after - (facts.not_after - facts.not_before) / 3;
        let f = facts.clone();
        self.status.update(|s| {
            s.source = "acme".into();
            s.cert = Some(f);
            s.renew_at = Some(renew_at);
        });
        Ok(facts)
    }
}

#[async_trait::async_trait]
impl CertCache for StoreCache {
    type EC = CacheError;

    async fn load_cert(&self, domains: &[String], directory_url: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let name = record_name("cert", domains, directory_url);
        let Some(bytes) = self.store.get_secret(&name)? else { return Ok(None) };
        let rec: StoredCert = serde_json::from_slice(&bytes)?;
        let key = sealed::open(&self.keyring, &secret(&name), &rec.key_sealed)?;
        let mut pem = key.to_vec();
        pem.extend_from_slice(b"\n");
        pem.extend_from_slice(rec.chain_pem.as_bytes());
        match self.install(&pem) {
            Ok(facts) => {
                tracing::info!(serial = %facts.serial, not_after = facts.not_after, "serving the cached ACME certificate");
                Ok(Some(pem))
            }
            Err(e) => {
                tracing::warn!(error = %e, "the cached ACME certificate is unusable; ordering a new one");
                Ok(None)
            }
        }
    }

    async fn store_cert(&self, domains: &[String], directory_url: &str, cert: &[u8]) -> Result<(), CacheError> {
        // Serve it first: a failure to cache must not keep the new certificate off the wire.
        self.install(cert)?;
        store_cert_bundle(&self.store, &self.keyring, domains, directory_url, cert).await
    }
}

#[async_trait::async_trait]
impl AccountCache for StoreCache {
    type EA = CacheError;

    async fn load_account(&self, contact: &[String], directory_url: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let name = record_name("account", contact, directory_url);
        let key = sealed::get(&self.store, &self.keyring, &secret(&name))?;
        Ok(key.map(|k| k.to_vec()))
    }

    async fn store_account(&self, contact: &[String], directory_url: &str, account: &[u8]) -> Result<(), CacheError> {
        store_account_key(&self.store, &self.keyring, contact, directory_url, account).await
    }
}

/// Starts the ACME driver: loads the cached certificate and account, orders when needed,
/// renews on schedule, and reports every outcome as an audit event.
pub fn start(
    cfg: &AcmeConfig,
    store: Store,
    keyring: Arc<Keyring>,
    slot: Arc<CertSlot>,
    status: Arc<TlsStatus>,
    audit: Audit,
) -> anyhow::Result<AcmeParts> {
    let client = super::client_config(&cfg.ca_roots)?;
    let cache = StoreCache { store, keyring, slot, status: status.clone() };
    let mut acme = rustls_acme::AcmeConfig::new_with_client_config(&cfg.domains, client)
        .directory(cfg.directory_url())
        .challenge_type(match cfg.challenge {
            AcmeChallenge::TlsAlpn01 => UseChallenge::TlsAlpn01,
            AcmeChallenge::Http01 => UseChallenge::Http01,
        })
        .cache(cache);
    if let Some(contact) = &cfg.contact {
        acme = acme.contact_push(contact);
    }
    let mut state = acme.state();
    let resolver = state.resolver();
    let challenge_config = state.challenge_rustls_config_with_provider(Arc::new(super::crypto_provider()));
    let domains = cfg.domains.join(",");
    tracing::info!(
        domains = %domains,
        directory = %cfg.directory_url(),
        "ACME enabled; serving the self-signed certificate until the first ACME certificate arrives"
    );
    tokio::spawn(async move {
        let client = ClientInfo { ip: "local".into(), ..Default::default() };
        let mut have_acme_cert = false;
        while let Some(event) = state.next().await {
            let now = crate::clock::now();
            match event {
                Ok(EventOk::DeployedCachedCert) => have_acme_cert = true,
                Ok(EventOk::DeployedNewCert) => {
                    status.update(|s| {
                        s.last_attempt = Some(now);
                        s.last_error = None;
                    });
                    let info = status.get();
                    let kind =
                        if have_acme_cert { EventKind::CertificateRenewed } else { EventKind::CertificateIssued };
                    have_acme_cert = true;
                    let mut ev = SecurityEvent::new(kind, Severity::Info, &client).actor("system").target(&domains);
                    if let Some(c) = &info.cert {
                        ev = ev.detail("serial", &c.serial).detail("not_after", c.not_after.to_string());
                        tracing::info!(serial = %c.serial, not_after = c.not_after, "new ACME certificate deployed");
                    }
                    audit.record_background(ev);
                }
                Ok(EventOk::CertCacheStore) | Ok(EventOk::AccountCacheStore) => {}
                Err(EventError::Order(e)) => {
                    let msg = crate::audit::event::sanitize(&e.to_string(), 300);
                    tracing::warn!(error = %msg, "ACME order failed; retrying with backoff");
                    status.update(|s| {
                        s.last_attempt = Some(now);
                        s.last_error = Some(msg.clone());
                    });
                    audit.record_background(
                        SecurityEvent::new(EventKind::CertificateRenewalFailed, Severity::Warning, &client)
                            .actor("system")
                            .target(&domains)
                            .detail("error", msg),
                    );
                }
                Err(e) => {
                    let msg = crate::audit::event::sanitize(&e.to_string(), 300);
                    tracing::error!(error = %msg, "ACME certificate cache failed");
                    status.update(|s| s.last_error = Some(msg));
                }
            }
        }
    });
    Ok(AcmeParts { resolver, challenge_config })
}
