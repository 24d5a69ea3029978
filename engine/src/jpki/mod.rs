//! JPKI: whose card is at the counter. Owns the trust anchors (the JPKI user-authentication CA
//! generations), chain validation with rustls-webpki at an explicit time, the verified-leaf
//! cache, the subject-CN rule, challenges and the card's signature over them, and the parsing
//! and signature check of the revocations partners push (X.509 CRLs and serial lists).
//!
//! Trust is decided only by rustls-webpki (chains) and aws-lc-rs (signatures); x509-parser
//! reads fields and never decides anything. This module never touches storage, sockets or the
//! clock: every check takes `now`, and what is revoked is the registry's to say. It never keeps
//! a whole end-entity certificate: the cache holds its fingerprint, serial, CA, validity and
//! public key, and nothing else. Every input is bounded by a named limit before it is parsed.

pub mod anchors;
pub mod cache;
pub mod challenge;
pub mod crl;
pub mod dev;
pub mod leaf;

use std::sync::Arc;

use aws_lc_rs::digest;

pub use anchors::{Anchor, AnchorError, Anchors};
pub use cache::LeafCache;
pub use challenge::{CHALLENGE_LEN, Challenge, Challenges};
pub use crl::{RevocationList, SerialNo};
pub use leaf::{CnError, VerifiedLeaf};

use crate::id::{CertRef, IdError, MyKeyId, Timestamp};

/// Largest end-entity certificate accepted, in bytes. A JPKI authentication certificate is
/// about 1.3 KB; anything far larger is refused before it is parsed.
pub const CERT_LEN_MAX: usize = 8 * 1024;
/// Largest challenge signature accepted, in bytes (RSA-8192).
pub const SIGNATURE_LEN_MAX: usize = 1024;
/// Smallest RSA modulus accepted anywhere, in bits (JPKI keys are RSA-2048).
pub const RSA_BITS_MIN: usize = 2048;
/// Largest RSA modulus accepted anywhere, in bits; bounds the cost of one verification.
pub const RSA_BITS_MAX: usize = 8192;

/// Why a certificate, a challenge signature or a revocation push was refused. Each case a
/// caller may need to tell apart has its own variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JpkiError {
    /// The certificate is larger than [`CERT_LEN_MAX`].
    #[error("the certificate is {len} bytes, more than the {max} allowed")]
    CertTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The certificate is not well-formed DER X.509 (garbage, truncated, trailing bytes).
    #[error("the certificate is not a well-formed X.509 certificate: {reason}")]
    CertMalformed {
        /// What is wrong with it.
        reason: String,
    },
    /// A digital-signature certificate (署名用電子証明書) was offered: MyKey never accepts it.
    #[error(
        "a JPKI digital-signature certificate was offered; only the user-authentication certificate is accepted"
    )]
    SignatureCertificate,
    /// The subject CN breaks the JPKI rule.
    #[error("the certificate's subject CN is not a JPKI authentication CN: {0}")]
    BadCn(#[from] CnError),
    /// The certificate's key is not RSA of an accepted size.
    #[error("the certificate's key is not RSA with {min} to {max} bits: {found}")]
    BadKey {
        /// What was found.
        found: String,
        /// Smallest modulus accepted.
        min: usize,
        /// Largest modulus accepted.
        max: usize,
    },
    /// The certificate's keyUsage does not allow its key to sign the challenge (RFC 5280
    /// §4.2.1.3: digitalSignature), or it has none (the JPKI profile always carries one).
    #[error("the certificate's key may not sign: {found}")]
    KeyUsage {
        /// What the certificate's keyUsage says.
        found: String,
    },
    /// The certificate's validity ended before `now`.
    #[error("the certificate expired at {not_after}")]
    Expired {
        /// The end of its validity (or of its CA's, if earlier).
        not_after: Timestamp,
    },
    /// The certificate's validity starts after `now`.
    #[error("the certificate is not valid before {not_before}")]
    NotYetValid {
        /// The start of its validity.
        not_before: Timestamp,
    },
    /// No configured user-authentication CA issued the certificate (no anchor with its issuer
    /// name and a key that verifies its signature).
    #[error("the certificate was not issued by a trusted JPKI user-authentication CA")]
    UnknownIssuer,
    /// rustls-webpki refused the chain for another reason.
    #[error("the certificate chain is invalid: {0}")]
    Chain(webpki::Error),
    /// The challenge was issued to another client certificate (it is burnt).
    #[error(
        "the challenge was issued to another client certificate; ask for a challenge on this connection"
    )]
    ChallengeNotYours,
    /// The challenge was never issued here (or was dropped to keep the table bounded).
    #[error("the challenge is unknown: it was not issued by this engine")]
    ChallengeUnknown,
    /// The challenge was used already; each is single-use.
    #[error("the challenge was used already; ask for a new one")]
    ChallengeReused,
    /// The challenge outlived its lifetime.
    #[error("the challenge expired at {expired_at}; ask for a new one")]
    ChallengeExpired {
        /// When it expired.
        expired_at: Timestamp,
    },
    /// Too many challenges are outstanding.
    #[error("too many challenges are outstanding ({max}); retry shortly")]
    TooManyChallenges {
        /// The limit.
        max: usize,
    },
    /// The card's signature over the challenge does not verify with the certificate's key.
    #[error("the signature over the challenge does not verify with the certificate's key")]
    BadSignature,
    /// A revocation push is larger than its limit.
    #[error("the {what} is {len} bytes, more than the {max} allowed")]
    PushTooLarge {
        /// CRL or serial list.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The CRL is not well-formed or uses something this engine refuses (delta CRL, unknown
    /// critical extension, indirect entries).
    #[error("the CRL is refused: {reason}")]
    CrlMalformed {
        /// Why.
        reason: String,
    },
    /// No configured user-authentication CA has the CRL's issuer name (or its key identifier).
    #[error("the CRL's issuer is not a configured JPKI user-authentication CA")]
    CrlUnknownIssuer,
    /// The CRL's signature verifies with none of the CA generations of its issuer name.
    #[error("the CRL's signature does not verify with any generation of its CA")]
    CrlBadSignature,
    /// The CRL's thisUpdate is in the future.
    #[error("the CRL is not valid before {this_update}")]
    CrlNotYetValid {
        /// Its thisUpdate.
        this_update: Timestamp,
    },
    /// The CRL's nextUpdate has passed: it is stale.
    #[error("the CRL is stale: its nextUpdate {next_update} has passed")]
    CrlStale {
        /// Its nextUpdate.
        next_update: Timestamp,
    },
    /// The CRL or serial list holds more entries than allowed.
    #[error("the {what} holds more than {max} entries")]
    TooManyEntries {
        /// CRL or serial list.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// A serial list is malformed.
    #[error("serial list line {line}: {reason}")]
    SerialList {
        /// 1-based line number.
        line: usize,
        /// Why.
        reason: String,
    },
    /// A serial list names a CA key identifier that is not a configured anchor.
    #[error("the serial list names CA key id {key_id}, which is not a configured anchor")]
    UnknownCa {
        /// The key id, in hex.
        key_id: String,
    },
    /// An identifier read from a certificate or push is out of range.
    #[error(transparent)]
    Id(#[from] IdError),
}

/// A card's proof of possession: its authentication certificate, the challenge this engine
/// issued, and the card's RSA PKCS#1 v1.5 SHA-256 signature over the challenge bytes.
#[derive(Clone, Copy, Debug)]
pub struct CardProof<'a> {
    /// The user-authentication certificate, DER.
    pub cert_der: &'a [u8],
    /// The challenge as issued.
    pub challenge: &'a [u8],
    /// The signature over the challenge.
    pub signature: &'a [u8],
}

/// An authenticated card: the certificate chains to a JPKI user-authentication CA at `now`,
/// its CN follows the rule, and its key signed a fresh challenge. Revocation is checked by
/// the registry, against the revocation index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Card {
    /// The 14-character random string of the subject CN: the MyKey ID of a full registration.
    pub cn_id: MyKeyId,
    /// The certificate: CA key identifier and serial.
    pub cert: CertRef,
    /// SHA-256 of the certificate's DER.
    pub fingerprint: [u8; 32],
    /// When the certificate (or its CA, if earlier) stops being valid.
    pub not_after: Timestamp,
}

/// Settings of the JPKI layer.
#[derive(Clone, Copy, Debug)]
pub struct JpkiConfig {
    /// Verified certificates kept in the cache.
    pub leaf_cache_entries: usize,
    /// Challenges outstanding at once.
    pub challenges_max: usize,
    /// Seconds a challenge stays usable.
    pub challenge_ttl_secs: u32,
}

impl Default for JpkiConfig {
    fn default() -> Self {
        Self {
            // ~300 B an entry: 64K repeat visitors in ~20 MB.
            leaf_cache_entries: 1 << 16,
            challenges_max: challenge::CHALLENGES_MAX,
            challenge_ttl_secs: challenge::CHALLENGE_TTL_SECS,
        }
    }
}

/// The JPKI layer: anchors, verified-leaf cache and challenges, shared by every request.
pub struct Jpki {
    anchors: arc_swap::ArcSwap<Anchors>,
    cache: LeafCache,
    challenges: Challenges,
}

impl Jpki {
    /// A JPKI layer over loaded anchors.
    pub fn new(anchors: Anchors, config: JpkiConfig) -> Self {
        Self {
            anchors: arc_swap::ArcSwap::from_pointee(anchors),
            cache: LeafCache::new(config.leaf_cache_entries),
            challenges: Challenges::new(config.challenges_max, config.challenge_ttl_secs),
        }
    }

    /// The trust anchors in force now.
    pub fn anchors(&self) -> Arc<Anchors> {
        self.anchors.load_full()
    }

    /// Replaces the trust anchors (an operator added a CA generation and reloaded) and empties
    /// the verified-leaf cache, so no certificate is accepted on the strength of an anchor
    /// that is gone. Outstanding challenges stay valid.
    pub fn replace_anchors(&self, anchors: Anchors) {
        self.anchors.store(Arc::new(anchors));
        self.cache.clear();
    }

    /// Issues a fresh, random, single-use challenge, usable until `now` plus its lifetime.
    pub fn issue_challenge(&self, now: Timestamp) -> Result<Challenge, JpkiError> {
        self.challenges.issue(now)
    }

    /// As [`Jpki::issue_challenge`], for the client certificate whose SHA-256 is `owner`: only
    /// that certificate may present it ([`Jpki::check_challenge_owner`]).
    pub fn issue_challenge_for(
        &self,
        now: Timestamp,
        owner: [u8; 32],
    ) -> Result<Challenge, JpkiError> {
        self.challenges.issue_for(now, Some(owner))
    }

    /// Consumes `challenge` (issued here to `presenter`) before a write carrying it is
    /// forwarded to the cluster's writer, which adopts it ([`Jpki::adopt_challenge`]).
    pub fn take_challenge(
        &self,
        now: Timestamp,
        challenge: &[u8],
        presenter: &[u8; 32],
    ) -> Result<(), JpkiError> {
        self.challenges.check_owner(challenge, presenter)?;
        self.challenges.take(now, challenge)
    }

    /// Holds a challenge another node issued and consumed before it forwarded a card's write
    /// here, as issued to `owner` (see [`challenge::Challenges::adopt`]).
    pub fn adopt_challenge(&self, now: Timestamp, challenge: &[u8], owner: [u8; 32]) {
        self.challenges.adopt(now, challenge, owner);
    }

    /// Refuses (and burns) a challenge presented by another client certificate than the one
    /// it was issued to.
    pub fn check_challenge_owner(
        &self,
        challenge: &[u8],
        presenter: &[u8; 32],
    ) -> Result<(), JpkiError> {
        self.challenges.check_owner(challenge, presenter)
    }

    /// Verifies a certificate at `now`: from the cache when it was verified before (its
    /// validity is checked again), else by a full chain validation, whose result is cached.
    pub fn verify_cert(&self, now: Timestamp, der: &[u8]) -> Result<Arc<VerifiedLeaf>, JpkiError> {
        if der.len() > CERT_LEN_MAX {
            return Err(JpkiError::CertTooLarge {
                len: der.len(),
                max: CERT_LEN_MAX,
            });
        }
        let fingerprint = sha256(der);
        if let Some(hit) = self.cache.get(&fingerprint) {
            hit.check_time(now)?;
            return Ok(hit);
        }
        let anchors = self.anchors.load_full();
        let leaf = Arc::new(leaf::verify_chain(&anchors, der, fingerprint, now)?);
        // Not cached if the anchors were replaced meanwhile: the cache holds only results
        // of the anchors in force.
        if Arc::ptr_eq(&anchors, &self.anchors.load()) {
            self.cache.insert(fingerprint, Arc::clone(&leaf));
        }
        Ok(leaf)
    }

    /// Authenticates a card at `now`: consumes the challenge (single use, whatever follows),
    /// verifies the certificate, then the card's signature over the challenge.
    pub fn authenticate(&self, now: Timestamp, proof: &CardProof<'_>) -> Result<Card, JpkiError> {
        self.challenges.take(now, proof.challenge)?;
        let leaf = self.verify_cert(now, proof.cert_der)?;
        leaf.verify_signature(proof.challenge, proof.signature)?;
        Ok(leaf.card())
    }

    /// Parses a partner's CRL and checks its signature against the right CA generation and its
    /// thisUpdate/nextUpdate against `now`. The CRL number is the registry's to compare.
    pub fn parse_crl(&self, now: Timestamp, der: &[u8]) -> Result<RevocationList, JpkiError> {
        crl::parse_crl(&self.anchors.load(), now, der)
    }

    /// Parses a partner's serial list for one configured CA.
    pub fn parse_serial_list(&self, text: &[u8]) -> Result<RevocationList, JpkiError> {
        crl::parse_serial_list(&self.anchors.load(), text)
    }

    /// Forgets a cached certificate by its fingerprint, so its next use is checked in full.
    pub fn evict(&self, fingerprint: &[u8; 32]) {
        self.cache.remove(fingerprint);
    }

    /// Number of certificates in the verified-leaf cache.
    pub fn cached_leaves(&self) -> usize {
        self.cache.len()
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Seconds since the epoch of an X.509 time, clamped into the range of [`Timestamp`].
pub(crate) fn clamp_time(secs: i64) -> Timestamp {
    Timestamp::from_raw(secs.clamp(0, i64::from(u32::MAX)) as u32)
}

/// Bits of a big-endian unsigned modulus, leading zero bytes ignored.
pub(crate) fn modulus_bits(modulus: &[u8]) -> usize {
    let first = modulus
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(modulus.len());
    let m = &modulus[first..];
    match m.first() {
        Some(&b) => m.len() * 8 - b.leading_zeros() as usize,
        None => 0,
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    format!("{:x}", crate::id::Hex(bytes))
}

/// Reads a DER header at `at`: (tag, content start, content length).
/// Says in words what is wrong with the outer structure of a DER object (`what`: "the
/// certificate", "the CRL"), or `None` if its outer TLV is sound: one SEQUENCE, in DER's length
/// form, exactly filling the bytes. Parsers report these cases as `TrailingData` or `Eof`; a
/// partner needs to know which of them it sent.
pub(crate) fn outer_der_problem(der: &[u8], what: &str) -> Option<String> {
    let Some(&tag) = der.first() else {
        return Some(format!("{what} is empty"));
    };
    if tag != 0x30 {
        return Some(if der.starts_with(b"-----BEGIN") {
            format!("{what} is PEM text; send the DER bytes")
        } else {
            format!(
                "{what} does not start with a DER SEQUENCE (first byte 0x{tag:02x}): not X.509 DER"
            )
        });
    }
    let Some(&first) = der.get(1) else {
        return Some(format!("{what} is truncated inside its first header"));
    };
    if first == 0x80 {
        return Some(format!(
            "{what} uses BER's indefinite length; DER (RFC 5280) is required"
        ));
    }
    let Some((_, start, len)) = der_header(der, 0) else {
        return Some(format!(
            "{what} is truncated inside its first header, or its length field is over 4 bytes"
        ));
    };
    if !der_length_minimal(der, 0) {
        return Some(format!(
            "{what}'s length is not in DER's shortest form (BER); DER (RFC 5280) is required"
        ));
    }
    let end = start.saturating_add(len);
    if end > der.len() {
        return Some(format!(
            "{what} is truncated: its header says {end} bytes, {} are present",
            der.len()
        ));
    }
    if end < der.len() {
        return Some(format!(
            "{what} is followed by {} bytes that are not part of it",
            der.len() - end
        ));
    }
    None
}

/// Whether the length of the DER header at `at` is in its shortest form (a long form only for
/// 128 and more, with no leading zero byte). `false` if the header is cut short.
pub(crate) fn der_length_minimal(b: &[u8], at: usize) -> bool {
    match b.get(at + 1) {
        None => false,
        Some(0x81) => b.get(at + 2).is_some_and(|&l| l >= 0x80),
        Some(0x82..=0x84) => b.get(at + 2).is_some_and(|&l| l != 0),
        Some(_) => true,
    }
}

pub(crate) fn der_header(b: &[u8], at: usize) -> Option<(u8, usize, usize)> {
    let tag = *b.get(at)?;
    let first = *b.get(at + 1)?;
    if first < 0x80 {
        return Some((tag, at + 2, usize::from(first)));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 {
        return None;
    }
    let mut len = 0usize;
    for i in 0..n {
        len = (len << 8) | usize::from(*b.get(at + 2 + i)?);
    }
    Some((tag, at + 2 + n, len))
}
