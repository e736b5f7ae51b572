//! The publisher's per-client state: identity, focus, byte budget, subscriptions, and one view
//! per table with the queue of entries that became dirty.

use glam::Vec3;
use orrery_row::Identity;

use crate::shared::SharedKey;
use crate::sql::{Condition, Within};
use crate::view::View;

/// A `within(..)` subscription: refreshed around the client's focus every publish.
pub(crate) struct SpatialSub {
    pub(crate) within: Within,
    pub(crate) condition: Option<Condition>,
}

/// How a subscription is evaluated.
pub(crate) enum SubKind {
    Shared(SharedKey),
    Spatial(SpatialSub),
}

/// One subscription of a client.
pub(crate) struct Sub {
    pub(crate) query_id: u32,
    pub(crate) table: u32,
    pub(crate) bit: u32,
    /// The query's predicates (its share of the client's predicate budget).
    pub(crate) predicates: usize,
    pub(crate) kind: SubKind,
}

/// What the publisher keeps per connected client.
pub(crate) struct ClientState {
    pub(crate) identity: Identity,
    pub(crate) focus: Option<Vec3>,
    pub(crate) budget: f64,
    /// The budget did not cover the queue at the last full flush.
    pub(crate) bound: bool,
    /// (table, slot) of the row the focus followed at the last full flush.
    pub(crate) focus_row: Option<(u32, u32)>,
    /// Budget accrued since the last full flush (`PublishConfig::bound_flush_bytes`).
    pub(crate) accrued_since_flush: f64,
    pub(crate) subs: Vec<Sub>,
    /// Views by table id.
    pub(crate) views: Vec<View>,
    /// (table, slot) of entries that became dirty and may still be.
    pub(crate) dirty: Vec<(u32, u32)>,
    /// The focus the spatial views were last refreshed around.
    pub(crate) refreshed_focus: Option<Vec3>,
    /// The next spatial refresh must be a full one (new client, or its subscriptions changed).
    pub(crate) stale: bool,
}
