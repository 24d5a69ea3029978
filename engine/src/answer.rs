//! The values an operation answers with: what a lookup found, what a link, unlink, provider
//! registration or revocation push did, and the state of an ID. The registry produces them, the
//! codec (`wire`) carries them, and both CLIs print them through the one [`Display`] here.
//!
//! Plain values only: no encoding (the on-disk byte of [`IdState`] lives with the records in
//! `registry::record`, the wire byte in `wire`), no behaviour, no dependency on the store or the
//! registry, so that the codec can name them without depending on the domain.
//!
//! [`Display`]: std::fmt::Display

use std::fmt;

use crate::id::ServiceId;

/// The state of a MyKey ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdState {
    /// Registered and usable.
    Active,
    /// Provisionally registered; usable once a municipal counter confirms it.
    Provisional,
    /// Its certificate was revoked; a municipal counter can re-bind it to a new certificate.
    Suspended,
    /// Deleted; the ID is never issued again.
    Deleted,
}

impl IdState {
    /// Every state, in order.
    pub const ALL: [IdState; 4] = [
        IdState::Active,
        IdState::Provisional,
        IdState::Suspended,
        IdState::Deleted,
    ];

    /// Lower-case name, as the population file and the CLI write it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Provisional => "provisional",
            Self::Suspended => "suspended",
            Self::Deleted => "deleted",
        }
    }
}

/// What a lookup of `(MyKey ID, provider)` answers: exactly one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The service ID linked for the provider.
    Linked(ServiceId),
    /// The ID is active but has no link for this provider.
    NotLinked,
    /// No registration holds the ID (or its provisional registration expired).
    UnknownId,
    /// Provisionally registered, not yet confirmed: not usable.
    Provisional,
    /// Its certificate was revoked.
    Suspended,
    /// Deleted.
    Deleted,
}

impl Lookup {
    /// The answer's kind in snake case, as JSON output names it: `linked`, `not_linked`,
    /// `unknown_id`, `provisional`, `suspended`, `deleted`.
    pub fn kind(&self) -> &'static str {
        match self {
            Lookup::Linked(_) => "linked",
            Lookup::NotLinked => "not_linked",
            Lookup::UnknownId => "unknown_id",
            Lookup::Provisional => "provisional",
            Lookup::Suspended => "suspended",
            Lookup::Deleted => "deleted",
        }
    }
}

/// The words both CLIs print for an answer, e.g. `linked: service ID <service ID>` or `not
/// linked for this provider`.
impl fmt::Display for Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lookup::Linked(s) => write!(f, "linked: service ID {s}"),
            Lookup::NotLinked => f.write_str("not linked for this provider"),
            Lookup::UnknownId => f.write_str("unknown MyKey ID"),
            Lookup::Provisional => {
                f.write_str("provisional (not usable until a municipal counter confirms it)")
            }
            Lookup::Suspended => f.write_str("suspended (certificate revoked)"),
            Lookup::Deleted => f.write_str("deleted"),
        }
    }
}

/// What registering a provider did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderOutcome {
    /// Newly registered.
    Registered,
    /// It was registered already; nothing changed.
    AlreadyRegistered,
}

/// What a link did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkOutcome {
    /// Newly linked.
    Linked,
    /// The same service ID was linked already ("service ID already registered").
    AlreadyLinked,
    /// A different service ID was replaced, as the request asked.
    Replaced {
        /// The service ID that was linked before.
        previous: ServiceId,
    },
}

/// What an unlink did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnlinkOutcome {
    /// The link was removed.
    Unlinked,
    /// There was no link for this provider.
    NotLinked,
}

/// What a revocation batch changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevokeSummary {
    /// Certificates not known as revoked before.
    pub newly_revoked: u64,
    /// Certificates already known as revoked (or repeated in the batch).
    pub already_known: u64,
    /// MyKey IDs suspended because their certificate was revoked.
    pub suspended: u64,
}

/// What a revocation push did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PushSummary {
    /// Certificates newly revoked, already known, and IDs suspended.
    pub revoke: RevokeSummary,
    /// Entries in the list.
    pub entries: u64,
    /// True when this push id was applied before with the same content: nothing changed now,
    /// and the summary is the first one's.
    pub replayed: bool,
}
