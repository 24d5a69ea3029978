//! The code tables of `mykey/1`: every operation's opcode and every response status, with the
//! names `engine/PROTOCOL.md` gives them. Owns nothing but the numbers and names; what a code
//! means for a request is the server's business.

macro_rules! codes {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $v:ident = $n:literal => $s:literal,)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name {
            $($(#[$vdoc])* $v = $n,)*
        }

        impl $name {
            /// The value with this code.
            pub fn from_u8(b: u8) -> Option<Self> {
                match b {
                    $($n => Some(Self::$v),)*
                    _ => None,
                }
            }

            /// The name used in `engine/PROTOCOL.md`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$v => $s,)*
                }
            }
        }
    };
}

codes! {
    /// An operation.
    Op {
        /// One lookup.
        Lookup = 0x01 => "LOOKUP",
        /// Many lookups for one provider.
        LookupBatch = 0x02 => "LOOKUP_BATCH",
        /// A fresh challenge for a card to sign.
        Challenge = 0x03 => "CHALLENGE",
        /// A lookup for the ID bound to an authenticated card.
        LookupCard = 0x04 => "LOOKUP_CARD",
        /// Full registration with a card.
        RegisterFull = 0x05 => "REGISTER_FULL",
        /// Provisional registration of a chosen ID with a card.
        RegisterProvisional = 0x06 => "REGISTER_PROVISIONAL",
        /// Confirmation of a provisional ID with the card.
        Confirm = 0x07 => "CONFIRM",
        /// Link (or replace) a service ID.
        Link = 0x08 => "LINK",
        /// Unlink a service ID.
        Unlink = 0x09 => "UNLINK",
        /// Re-bind an ID to a new card.
        Rebind = 0x0A => "REBIND",
        /// Delete an ID.
        Delete = 0x0B => "DELETE",
        /// A partner's CRL.
        PushCrl = 0x0C => "PUSH_CRL",
        /// A partner's serial list.
        PushSerials = 0x0D => "PUSH_SERIALS",
        /// A provider's links, streamed.
        Export = 0x0E => "EXPORT",
        /// Server statistics.
        Stats = 0x0F => "STATS",
        /// Register a service provider.
        RegisterProvider = 0x10 => "REGISTER_PROVIDER",
        /// One write, answered with the seq at which it is visible.
        WithSeq = 0x11 => "WITH_SEQ",
        /// One read, served once the node has applied a given seq.
        AtSeq = 0x12 => "AT_SEQ",
        /// A write a cluster node was sent, passed on to the writer with its client's identity.
        Forward = 0x13 => "FORWARD",
        /// A partner's revocation push a cluster node was sent, passed on to the writer (a
        /// `FORWARD` with a push's body limit and deadline).
        ForwardPush = 0x14 => "FORWARD_PUSH",
        /// Opens a stream that carries many lookups, one after another, each answered in turn.
        Pipeline = 0x15 => "PIPELINE",
    }
}

codes! {
    /// A response status.
    Status {
        /// Success.
        Ok = 0 => "OK",
        /// The frame or its body does not follow the protocol.
        BadFrame = 1 => "BAD_FRAME",
        /// A protocol version other than 1.
        UnsupportedVersion = 2 => "UNSUPPORTED_VERSION",
        /// An unknown opcode.
        UnknownOpcode = 3 => "UNKNOWN_OPCODE",
        /// A body over its limit.
        FrameTooLarge = 4 => "FRAME_TOO_LARGE",
        /// The certificate's role or providers do not allow this.
        Forbidden = 5 => "FORBIDDEN",
        /// This identity's request rate is over its limit.
        RateLimited = 6 => "RATE_LIMITED",
        /// Too many requests in flight.
        Busy = 7 => "BUSY",
        /// The server failed; the message says whether anything was applied.
        Internal = 8 => "INTERNAL",
        /// A malformed identifier.
        BadId = 9 => "BAD_ID",
        /// A write whose outcome the server cannot know (its log fsync failed or did not
        /// finish in time): it may or may not have been applied; retry the same request.
        OutcomeUnknown = 10 => "OUTCOME_UNKNOWN",
        /// A write to a cluster node that is not the writer, or while no writer can commit:
        /// nothing was applied; retry, on the writer or later.
        NoWriter = 11 => "NO_WRITER",
        /// An `AT_SEQ` read on a node that had not applied the seq asked for within the wait:
        /// nothing was read.
        Behind = 12 => "BEHIND",
        /// The provider is not registered.
        UnknownProvider = 16 => "UNKNOWN_PROVIDER",
        /// The MyKey ID is held by another registration.
        IdTaken = 17 => "ID_TAKEN",
        /// The MyKey ID was deleted and is never issued again.
        IdDeleted = 18 => "ID_DELETED",
        /// The certificate is bound to another MyKey ID.
        CertBound = 19 => "CERT_BOUND",
        /// The certificate is revoked.
        CertRevoked = 20 => "CERT_REVOKED",
        /// No registration holds the MyKey ID.
        UnknownId = 21 => "UNKNOWN_ID",
        /// The ID's state does not allow this operation.
        WrongState = 22 => "WRONG_STATE",
        /// The provisional registration expired.
        ProvisionalExpired = 23 => "PROVISIONAL_EXPIRED",
        /// The card is not the one bound to the ID.
        CertMismatch = 24 => "CERT_MISMATCH",
        /// Another service ID is linked.
        LinkConflict = 25 => "LINK_CONFLICT",
        /// The ID holds the most links allowed.
        TooManyLinks = 26 => "TOO_MANY_LINKS",
        /// The card's certificate is not well-formed or too large.
        CertMalformed = 32 => "CERT_MALFORMED",
        /// The certificate or its CA expired.
        CertExpired = 33 => "CERT_EXPIRED",
        /// The certificate is not valid yet.
        CertNotYetValid = 34 => "CERT_NOT_YET_VALID",
        /// Not issued by a trusted JPKI user-authentication CA.
        UnknownIssuer = 35 => "UNKNOWN_ISSUER",
        /// A digital-signature certificate was offered.
        SignatureCertificate = 36 => "SIGNATURE_CERTIFICATE",
        /// The subject CN breaks the rule.
        BadCn = 37 => "BAD_CN",
        /// The key is not RSA 2048–8192.
        BadKey = 38 => "BAD_KEY",
        /// The chain is refused for another reason.
        ChainInvalid = 39 => "CHAIN_INVALID",
        /// The challenge was not issued by this server.
        ChallengeUnknown = 40 => "CHALLENGE_UNKNOWN",
        /// The challenge was used already.
        ChallengeReused = 41 => "CHALLENGE_REUSED",
        /// The challenge expired.
        ChallengeExpired = 42 => "CHALLENGE_EXPIRED",
        /// Too many outstanding challenges.
        TooManyChallenges = 43 => "TOO_MANY_CHALLENGES",
        /// The card's signature does not verify.
        BadSignature = 44 => "BAD_SIGNATURE",
        /// The card certificate's keyUsage does not allow digitalSignature.
        BadKeyUsage = 45 => "BAD_KEY_USAGE",
        /// The CRL is malformed or of a kind not accepted.
        CrlMalformed = 48 => "CRL_MALFORMED",
        /// The CRL's issuer is not a configured CA generation.
        CrlUnknownIssuer = 49 => "CRL_UNKNOWN_ISSUER",
        /// The CRL's signature does not verify.
        CrlBadSignature = 50 => "CRL_BAD_SIGNATURE",
        /// The CRL's thisUpdate is in the future.
        CrlNotYetValid = 51 => "CRL_NOT_YET_VALID",
        /// The CRL's nextUpdate has passed.
        CrlStale = 52 => "CRL_STALE",
        /// The CRL number is not above the last applied.
        CrlNotNewer = 53 => "CRL_NOT_NEWER",
        /// The CRL or serial list has too many entries.
        TooManyEntries = 54 => "TOO_MANY_ENTRIES",
        /// A serial-list line is malformed.
        SerialListMalformed = 55 => "SERIAL_LIST_MALFORMED",
        /// The serial list names an unconfigured CA.
        UnknownCa = 56 => "UNKNOWN_CA",
        /// The push id was used for different content.
        PushIdReused = 57 => "PUSH_ID_REUSED",
    }
}

impl Op {
    /// Whether `WITH_SEQ` may wrap this operation (a write whose body fits a request's limit).
    pub fn seq_wrappable_write(self) -> bool {
        matches!(
            self,
            Op::RegisterFull
                | Op::RegisterProvisional
                | Op::Confirm
                | Op::Link
                | Op::Unlink
                | Op::Rebind
                | Op::Delete
                | Op::RegisterProvider
        )
    }

    /// Whether `AT_SEQ` may wrap this operation (a read answered in one frame).
    pub fn seq_wrappable_read(self) -> bool {
        matches!(
            self,
            Op::Lookup | Op::LookupBatch | Op::LookupCard | Op::Stats
        )
    }

    /// Whether a node passes this operation on to the writer in a `FORWARD` when it is a
    /// follower (a write whose body fits a request's limit; the pushes go in a `FORWARD_PUSH`).
    pub fn forwardable(self) -> bool {
        self.seq_wrappable_write() || self == Op::WithSeq
    }

    /// A revocation push: a large body, a push-body slot, the push deadlines. `FORWARD_PUSH`
    /// carries one.
    pub fn is_push(self) -> bool {
        matches!(self, Op::PushCrl | Op::PushSerials | Op::ForwardPush)
    }

    /// Largest request body of this operation.
    pub fn body_len_max(self) -> u32 {
        match self {
            Op::PushCrl | Op::PushSerials => super::PUSH_LEN_MAX,
            Op::Forward => super::REQUEST_LEN_MAX + super::FORWARD_OVERHEAD_MAX,
            Op::ForwardPush => super::PUSH_LEN_MAX + super::FORWARD_OVERHEAD_MAX,
            _ => super::REQUEST_LEN_MAX,
        }
    }
}
