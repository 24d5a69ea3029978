//! Challenges: random, single-use, short-lived nonces that a card signs with its
//! authentication key after the holder enters the PIN, proving possession of the card.
//!
//! A challenge is [`CHALLENGE_LEN`] bytes from the system CSPRNG; the card signs exactly those
//! bytes (RSA PKCS#1 v1.5 with SHA-256). The table of outstanding challenges is bounded: when
//! full, expired entries are swept, and if it is still full the request is refused rather
//! than the table grown. A used challenge stays marked until it expires, so that a replay is
//! told apart from a challenge never issued. Owns no certificate logic and reads no clock.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};

use super::JpkiError;
use crate::id::Timestamp;

/// Bytes of a challenge.
pub const CHALLENGE_LEN: usize = 32;
/// Default lifetime of a challenge, in seconds: long enough to enter a PIN, short enough that
/// a stolen one is useless.
pub const CHALLENGE_TTL_SECS: u32 = 120;
/// Default bound on outstanding challenges (about 64 B each).
pub const CHALLENGES_MAX: usize = 1 << 18;
/// Shards of the table.
const SHARDS: usize = 16;

/// A challenge as issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// The bytes the card must sign.
    pub bytes: [u8; CHALLENGE_LEN],
    /// The last second at which it is accepted.
    pub expires_at: Timestamp,
}

#[derive(Clone, Copy)]
struct Entry {
    expires_at: Timestamp,
    used: bool,
    /// The SHA-256 of the client certificate that asked for it, when known: only that client
    /// may present it.
    owner: Option<[u8; 32]>,
}

type Map = HashMap<[u8; CHALLENGE_LEN], Entry, ahash::RandomState>;

/// The outstanding challenges.
pub struct Challenges {
    shards: Box<[Mutex<Map>]>,
    per_shard: usize,
    max: usize,
    ttl_secs: u32,
    rng: SystemRandom,
}

impl Challenges {
    /// A table of at most about `max` challenges living `ttl_secs` each.
    pub fn new(max: usize, ttl_secs: u32) -> Self {
        let per_shard = max.div_ceil(SHARDS).max(1);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Map::default())).collect(),
            per_shard,
            max: per_shard * SHARDS,
            ttl_secs,
            rng: SystemRandom::new(),
        }
    }

    fn shard(&self, c: &[u8; CHALLENGE_LEN]) -> std::sync::MutexGuard<'_, Map> {
        self.shards[usize::from(c[0]) % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Issues a challenge at `now`.
    pub fn issue(&self, now: Timestamp) -> Result<Challenge, JpkiError> {
        self.issue_for(now, None)
    }

    /// Issues a challenge at `now` to the client certificate whose SHA-256 is `owner`.
    pub fn issue_for(
        &self,
        now: Timestamp,
        owner: Option<[u8; 32]>,
    ) -> Result<Challenge, JpkiError> {
        let mut bytes = [0u8; CHALLENGE_LEN];
        self.rng
            .fill(&mut bytes)
            .map_err(|_| JpkiError::TooManyChallenges { max: 0 })?;
        let expires_at = now.plus_secs(u64::from(self.ttl_secs));
        let mut m = self.shard(&bytes);
        if m.len() >= self.per_shard {
            m.retain(|_, e| e.expires_at >= now);
            if m.len() >= self.per_shard {
                return Err(JpkiError::TooManyChallenges { max: self.max });
            }
        }
        m.insert(
            bytes,
            Entry {
                expires_at,
                used: false,
                owner,
            },
        );
        Ok(Challenge { bytes, expires_at })
    }

    /// Takes in a challenge that another node of the cluster issued, checked against `owner`
    /// and consumed before it forwarded the card's write here: held as issued to `owner` and
    /// unused until `now` plus the lifetime, so that the write consumes it here as it would
    /// have there. A challenge held already is left as it is.
    pub fn adopt(&self, now: Timestamp, challenge: &[u8], owner: [u8; 32]) {
        let Ok(bytes) = <[u8; CHALLENGE_LEN]>::try_from(challenge) else {
            return;
        };
        let mut m = self.shard(&bytes);
        if m.len() >= self.per_shard {
            m.retain(|_, e| e.expires_at >= now);
        }
        m.entry(bytes).or_insert(Entry {
            expires_at: now.plus_secs(u64::from(self.ttl_secs)),
            used: false,
            owner: Some(owner),
        });
    }

    /// Consumes `challenge` at `now`: it must have been issued here, be unused and unexpired.
    /// It is marked used whatever the caller finds next (a bad signature burns it too).
    pub fn take(&self, now: Timestamp, challenge: &[u8]) -> Result<(), JpkiError> {
        let key: &[u8; CHALLENGE_LEN] = challenge
            .try_into()
            .map_err(|_| JpkiError::ChallengeUnknown)?;
        let mut m = self.shard(key);
        let e = m.get_mut(key).ok_or(JpkiError::ChallengeUnknown)?;
        if e.used {
            return Err(JpkiError::ChallengeReused);
        }
        if now > e.expires_at {
            let expired_at = e.expires_at;
            m.remove(key);
            return Err(JpkiError::ChallengeExpired { expired_at });
        }
        e.used = true;
        Ok(())
    }

    /// Refuses a challenge presented by another client certificate than the one it was issued
    /// to (`presenter`, a SHA-256), burning it: defence in depth, since a challenge travels to
    /// a card and back through one terminal only. A challenge issued without an owner, or not
    /// held here, passes (consuming it says what is wrong with it).
    pub fn check_owner(&self, challenge: &[u8], presenter: &[u8; 32]) -> Result<(), JpkiError> {
        let Ok(key) = <&[u8; CHALLENGE_LEN]>::try_from(challenge) else {
            return Ok(());
        };
        let mut m = self.shard(key);
        if m.get(key)
            .is_some_and(|e| e.owner.is_some_and(|o| &o != presenter))
        {
            m.remove(key);
            return Err(JpkiError::ChallengeNotYours);
        }
        Ok(())
    }

    /// Challenges held now (outstanding or used and not yet expired).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|m| m.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> Timestamp {
        Timestamp::from_unix_secs(s).expect("time")
    }

    #[test]
    fn single_use_short_lived_and_bounded() {
        // Two per shard: `b` below must not be refused for landing in the shard of `a`.
        let c = Challenges::new(2 * SHARDS, 60);
        let a = c.issue(t(1000)).expect("issue");
        assert_eq!(a.expires_at, t(1060));
        assert!(matches!(
            c.take(t(1000), &[0u8; CHALLENGE_LEN]),
            Err(JpkiError::ChallengeUnknown)
        ));
        assert!(matches!(
            c.take(t(1000), &a.bytes[..5]),
            Err(JpkiError::ChallengeUnknown)
        ));
        c.take(t(1060), &a.bytes).expect("first use");
        assert!(matches!(
            c.take(t(1060), &a.bytes),
            Err(JpkiError::ChallengeReused)
        ));
        let b = c.issue(t(1000)).expect("issue");
        assert!(matches!(
            c.take(t(1061), &b.bytes),
            Err(JpkiError::ChallengeExpired { .. })
        ));
        // Two per shard: issuing until some shard is full must refuse, never grow.
        let mut refused = false;
        for _ in 0..1000 {
            if let Err(JpkiError::TooManyChallenges { max }) = c.issue(t(1000)) {
                assert_eq!(max, 2 * SHARDS);
                refused = true;
                break;
            }
        }
        assert!(refused, "the table must stay bounded");
        assert!(c.len() <= 2 * SHARDS);
        // Once they expire, the sweep makes room again.
        c.issue(t(2000)).expect("expired entries are swept");
    }
}
