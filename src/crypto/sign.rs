//! Signatures, MACs and key agreement keys, all from aws-lc-rs: the HMAC behind stream URLs,
//! Ed25519 for access tokens, X25519 for WireGuard keys, the SHA-1 of the WebSocket handshake,
//! and the rustls provider and signing keys for TLS. Their callers hold bytes and these types,
//! never a primitive.

use std::sync::Arc;

use aws_lc_rs::signature::KeyPair as _;
use zeroize::Zeroizing;

use super::CryptoError;

/// An HMAC-SHA256 key.
pub struct HmacKey(aws_lc_rs::hmac::Key);

impl HmacKey {
    pub fn sha256(secret: &[u8]) -> HmacKey {
        HmacKey(aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret))
    }

    /// The tag of `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        aws_lc_rs::hmac::sign(&self.0, message).as_ref().to_vec()
    }

    /// Whether `tag` is `message`'s, compared in constant time.
    pub fn verify(&self, message: &[u8], tag: &[u8]) -> bool {
        aws_lc_rs::hmac::verify(&self.0, message, tag).is_ok()
    }
}

/// A new Ed25519 key pair: (private key as PKCS#8 DER, public key).
pub fn ed25519_generate() -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), CryptoError> {
    use aws_lc_rs::signature::Ed25519KeyPair;
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| CryptoError::KeyGeneration)?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| CryptoError::KeyGeneration)?;
    Ok((Zeroizing::new(pkcs8.as_ref().to_vec()), pair.public_key().as_ref().to_vec()))
}

/// The X25519 public key of a private key, if it is a usable one.
pub fn x25519_public(private: &[u8; 32]) -> Option<Vec<u8>> {
    use aws_lc_rs::agreement::{PrivateKey, X25519};
    let key = PrivateKey::from_private_key(&X25519, private).ok()?;
    key.compute_public_key().ok().map(|p| p.as_ref().to_vec())
}

/// SHA-1, for protocols that fix it (the WebSocket handshake's `Sec-WebSocket-Accept`,
/// RFC 6455 §4.2.2); never for anything a secret depends on.
pub fn sha1_legacy(parts: &[&[u8]]) -> [u8; 20] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 20];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The one TLS crypto provider: aws-lc-rs, with forward-secret AEAD suites only (ECDHE key
/// exchange in TLS 1.2; every TLS 1.3 suite is both).
pub fn tls_provider() -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.retain(|suite| match suite {
        rustls::SupportedCipherSuite::Tls13(_) => true,
        rustls::SupportedCipherSuite::Tls12(s) => {
            let name = format!("{:?}", s.common.suite);
            name.contains("ECDHE") && (name.contains("GCM") || name.contains("CHACHA20_POLY1305"))
        }
    });
    provider
}

/// A TLS signing key from a private key (RSA, ECDSA or Ed25519).
pub fn tls_signing_key(
    key: &rustls::pki_types::PrivateKeyDer<'_>,
) -> Result<Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
    rustls::crypto::aws_lc_rs::sign::any_supported_type(key)
}
