//! # orrery-subscription
//!
//! Subscriptions: clients subscribe with SQL, and every tick each client is sent the changes of
//! the rows its queries select, as prioritised, bandwidth-budgeted deltas.
//!
//! [`Publisher`] is a state machine fed by the engine's change sets; it never touches the ECS
//! world, so it can run on the tick thread (the publish phase) or on a thread of its own. It
//! keeps a mirror of every table clients may read (`mirror`: rows keyed by primary key,
//! encoded once per change in wire form and as a delta against the previous version), the
//! shared state of non-spatial queries (`shared`: reference-counted by query text and
//! parameters), and per client (`client_state`): its identity, focus point, subscriptions,
//! the rows it can see (`view`, with hysteresis for spatial queries), a dirty set and a byte
//! budget.
//!
//! Each tick: [`Publisher::apply`] folds the tick's changes into the mirror and evaluates the
//! changed rows against the shared queries; [`Publisher::publish`] refreshes each client's
//! spatial views around its focus (`refresh`), then spends the client's budget on its dirty
//! rows, most urgent first (stale and close to the focus; `flush`). A row changed many times
//! while waiting is sent once, in its newest state; a dirty entry is cleared only when its
//! record is handed out. Queries are parsed by [`sql`] and evaluated by `eval`.
//!
//! Dependency rule: this crate depends on `orrery-engine` (change sets), `orrery-row` (schema,
//! values, wire records), `orrery-spatial` and `sqlparser`; never on the netcode, the server,
//! tokio or any I/O. The engine does not depend on it. See `docs/architecture.md` and
//! `docs/subscriptions.md`.

mod apply;
mod client_state;
mod config;
pub(crate) mod eval;
pub(crate) mod flush;
mod grid;
pub(crate) mod mirror;
mod moves;
mod publisher;
pub(crate) mod refresh;
pub(crate) mod shared;
pub mod sql;
pub(crate) mod view;

pub use config::{MESSAGE_FRAMING_BYTES, PublishConfig, SubscribeError};
pub use publisher::{Outgoing, Publisher, PublisherStats, SentCounters, Subscribed};
pub use sql::{QueryError, QueryLimits, SubscriptionQuery, check_limits};
