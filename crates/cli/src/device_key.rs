//! A device key as the login page's non-extractable WebCrypto key: P-256,
//! with proofs in DPoP format (RFC 9449). The benchmarks and the drills
//! play the page with it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use p256::ecdsa::signature::Signer as _;
use p256::elliptic_curve::Generate as _;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// One device's key pair.
pub struct DeviceKey(p256::ecdsa::SigningKey);

impl DeviceKey {
    /// A fresh key.
    pub fn new() -> DeviceKey {
        DeviceKey(p256::ecdsa::SigningKey::generate())
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> serde_json::Value {
        let point = self.0.verifying_key().to_sec1_point(false);
        serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": point.x().map(|x| URL_SAFE_NO_PAD.encode(x)).unwrap_or_default(),
            "y": point.y().map(|y| URL_SAFE_NO_PAD.encode(y)).unwrap_or_default(),
        })
    }

    /// The RFC 7638 thumbprint, as a login stores it.
    pub fn jkt(&self) -> String {
        let jwk = self.jwk();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk["x"].as_str().unwrap_or_default(),
            jwk["y"].as_str().unwrap_or_default()
        );
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
    }

    /// A proof for `method` on `url` made at `iat`, tied to the session
    /// `handle` when there is one (`ath`).
    pub fn proof(
        &self,
        method: &str,
        url: &str,
        handle: Option<&str>,
        iat: DateTime<Utc>,
    ) -> String {
        let mut jti = [0u8; 16];
        rand::rng().fill_bytes(&mut jti);
        let header = serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk()});
        let mut claims = serde_json::json!({
            "htm": method,
            "htu": url,
            "iat": iat.timestamp(),
            "jti": URL_SAFE_NO_PAD.encode(jti),
        });
        if let Some(h) = handle {
            claims["ath"] = URL_SAFE_NO_PAD.encode(Sha256::digest(h.as_bytes())).into();
        }
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig: p256::ecdsa::Signature = self.0.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }
}
