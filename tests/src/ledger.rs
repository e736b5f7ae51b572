//! The module of the server crash test: a ledger of numbered entries that clients record
//! (each call one row), and a presence table that `client_connected` / `client_disconnected`
//! keep up to date. After a `kill -9` every entry whose call was answered as durable must be
//! there, and nobody may be shown online.

use orrery_engine::prelude::*;

/// One recorded number.
#[table(name = entry, public)]
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The number (unique across the test).
    #[primary_key]
    pub n: u64,
    /// Who recorded it.
    pub by: Identity,
}

/// Whether an identity has a live connection.
#[table(name = presence, public)]
#[derive(Clone, Debug, PartialEq)]
pub struct Presence {
    /// The identity.
    #[primary_key]
    pub identity: Identity,
    /// Connected now.
    pub online: bool,
}

/// Records `n` (an error if it was recorded before).
#[reducer]
pub fn record(ctx: &mut ReducerContext, n: u64) -> Result<(), String> {
    let by = ctx.sender;
    ctx.db.entry().insert(Entry { n, by })?;
    Ok(())
}

/// Marks the caller online.
#[reducer(client_connected)]
pub fn connected(ctx: &mut ReducerContext) -> Result<(), String> {
    let identity = ctx.sender;
    let row = Presence {
        identity,
        online: true,
    };
    if ctx.db.presence().identity().find(&identity).is_some() {
        ctx.db.presence().identity().update(row)?;
    } else {
        ctx.db.presence().insert(row)?;
    }
    Ok(())
}

/// Marks the caller offline.
#[reducer(client_disconnected)]
pub fn disconnected(ctx: &mut ReducerContext) -> Result<(), String> {
    let identity = ctx.sender;
    ctx.db.presence().identity().update(Presence {
        identity,
        online: false,
    })?;
    Ok(())
}

/// The ledger module.
pub fn module() -> Module {
    Module::builder("ledger")
        .table::<Entry>()
        .table::<Presence>()
        .reducers(reducers![record, connected, disconnected])
        .build()
        .expect("the ledger module is valid")
}
