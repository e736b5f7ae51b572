//! The publisher's settings and why a subscription is refused.

use std::time::Duration;

use orrery_row::ConnectionId;

use crate::sql::{QueryError, QueryLimits};

/// Publisher settings.
#[derive(Clone, Debug)]
pub struct PublishConfig {
    /// Bytes each client may be sent per second, spent tick by tick: the published records,
    /// plus [`PublishConfig::wire_overhead_bytes`] per publish that sends the client anything,
    /// [`MESSAGE_FRAMING_BYTES`] per table update message, and what the server charges for the
    /// client's other messages ([`crate::Publisher::charge`], e.g. reducer replies). So it
    /// bounds the client's downstream on the wire, not only its rows.
    pub budget_bytes_per_second: u32,
    /// What the datagram around a publish costs on the wire besides its messages: the netcode
    /// header and authentication tag, the reliability layer's packet header and the acks it
    /// carries (default 40 bytes, measured on the sample game).
    pub wire_overhead_bytes: u32,
    /// How much more urgent a row with news is than one that only moved, when the budget
    /// binds (default 16; 1 ranks them alike): news is a change to a column other than the
    /// row's quantized ones, such as a turn or a hit, which a client cannot interpolate.
    pub news_urgency: f32,
    /// Send a client further behind than a row's recent history the columns that changed
    /// since its version (a rebase record) instead of the whole row (default on). Off, a
    /// budget-bound crowd costs a full row per refresh, about eight times the bytes for an
    /// identity-keyed avatar, but its clients decode fewer records.
    pub rebase: bool,
    /// A client the budget could not keep up with at its last publish is published again
    /// once it has accrued this many bytes of budget since (capped by `max_banked`), and only
    /// the row its focus follows goes out in the ticks between. Ranking a budget-bound client's queue (its
    /// whole crowd) is most of a crowded publish; this ranks it once per so many bytes instead
    /// of every tick, in fuller datagrams, but a turn or a hit in its view may wait as many
    /// ticks (default 1,024: at 8 KiB/s every two or three ticks; 0: every tick).
    pub bound_flush_bytes: u32,
    /// Most budget a client can bank while it has nothing to send.
    pub max_banked: Duration,
    /// Hysteresis margin for `within(..)`: a row enters a view within `radius` and leaves it
    /// beyond `radius + margin`.
    pub hysteresis: f32,
    /// Largest table update payload; larger outputs are split.
    pub max_message_bytes: usize,
    /// Most queries one client may hold.
    pub max_queries_per_client: usize,
    /// Most predicates all of one client's queries may hold together: what its subscriptions
    /// may cost the publisher per changed row.
    pub max_predicates_per_client: usize,
    /// Size limits on each query (text, predicates, nesting, `within` radius).
    pub query_limits: QueryLimits,
    /// Threads that publish clients in parallel (0: one per core; 1: the calling thread only).
    pub workers: usize,
    /// Refresh a spatial view from the rows that changed near it when its client's focus has
    /// not moved, instead of re-querying its whole region (the output is the same either way).
    pub incremental_refresh: bool,
    /// For the server's tick loop: publish a tick on the publish thread while the tick loop
    /// waits for the next tick (and, when the publish is long, while the next tick simulates),
    /// instead of on the tick thread. The messages are the same, in the same order; they leave
    /// when the publish is done. On by default: it takes the publish off the tick thread's
    /// time. The publisher itself does not read this.
    pub pipeline: bool,
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            budget_bytes_per_second: 8 * 1024,
            wire_overhead_bytes: 40,
            news_urgency: 16.0,
            rebase: true,
            bound_flush_bytes: 1024,
            max_banked: Duration::from_millis(250),
            hysteresis: 5.0,
            max_message_bytes: 1024,
            max_queries_per_client: 32,
            max_predicates_per_client: 256,
            query_limits: QueryLimits::default(),
            workers: 0,
            incremental_refresh: true,
            pipeline: true,
        }
    }
}

/// What one table update message costs on the wire around its payload: the envelope's variant,
/// table id, tick and length, and the reliability layer's message framing.
pub const MESSAGE_FRAMING_BYTES: u32 = 10;

/// Why a subscribe or unsubscribe was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The query is not valid.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// The client is not connected.
    #[error("{0} is not connected")]
    UnknownClient(ConnectionId),
    /// The query id is already in use by this client.
    #[error("query id {0} is already subscribed")]
    DuplicateQueryId(u32),
    /// No subscription with this id.
    #[error("no subscription with query id {0}")]
    UnknownQueryId(u32),
    /// Too many subscriptions.
    #[error("at most {0} subscriptions per client")]
    TooManyQueries(usize),
    /// The client's subscriptions together would hold too many predicates.
    #[error(
        "subscriptions of one client may hold at most {max} predicates; this one would make {total}"
    )]
    TooManyPredicates {
        /// What the client's subscriptions would hold with this one.
        total: usize,
        /// The configured maximum.
        max: usize,
    },
}
