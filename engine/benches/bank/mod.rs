//! The bank both the reducer benchmark and the `reducer_calls` example (instruction counts)
//! run: accounts keyed by random `u64` ids, the `transfer` reducer, and its pre-encoded calls.

use orrery_engine::Input;
use orrery_engine::prelude::*;

#[table(name = account)]
#[derive(Clone, Debug)]
pub struct Account {
    #[primary_key]
    pub id: u64,
    pub balance: i64,
}

#[reducer]
pub fn seed_accounts(ctx: &mut ReducerContext, ids: Vec<u64>, balance: i64) -> Result<(), String> {
    for id in ids {
        ctx.db.account().insert(Account { id, balance })?;
    }
    Ok(())
}

/// Validates first: an overdraft returns before any write.
#[reducer]
pub fn transfer(
    ctx: &mut ReducerContext,
    #[key(Account)] from: u64,
    #[key(Account)] to: u64,
    amount: i64,
) -> Result<(), String> {
    let mut a = ctx.db.account().id().find(&from).ok_or("no such account")?;
    let mut b = ctx.db.account().id().find(&to).ok_or("no such account")?;
    if a.balance < amount {
        return Err("insufficient funds".into());
    }
    a.balance -= amount;
    b.balance += amount;
    ctx.db.account().id().update(a)?;
    ctx.db.account().id().update(b)?;
    Ok(())
}

pub fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `n` random transfers as (from, to, amount), about 10% asking for more than any balance; the
/// raw baseline draws the same ones.
pub fn transfer_triples(ids: &[u64], n: usize) -> Vec<(u64, u64, i64)> {
    let mut state = 7;
    (0..n)
        .map(|_| {
            let from = ids[(splitmix(&mut state) % ids.len() as u64) as usize];
            let to = ids[(splitmix(&mut state) % ids.len() as u64) as usize];
            let amount: i64 = if splitmix(&mut state).is_multiple_of(10) {
                i64::MAX / 2
            } else {
                1
            };
            (from, to, amount)
        })
        .collect()
}

/// Pre-encoded argument payloads of [`transfer_triples`].
pub fn transfer_args(ids: &[u64], n: usize) -> Vec<Vec<u8>> {
    transfer_triples(ids, n)
        .into_iter()
        .map(|(from, to, amount)| {
            let mut bytes = from.to_bytes();
            to.encode(&mut bytes);
            amount.encode(&mut bytes);
            bytes
        })
        .collect()
}

/// What the network side hands the engine for one call: the reducer's name and its argument
/// bytes, in an `Input::Call` (built outside the timed region, as the server's input phase has
/// already decoded the message before the tick runs).
pub fn call_input(request_id: u64, reducer: &str, payload: &[u8]) -> Input {
    Input::Call {
        request_id,
        caller: Caller::client(Identity::ZERO, ConnectionId(7)),
        reducer: reducer.to_owned(),
        args: payload.to_vec(),
    }
}

/// The ids of `accounts` accounts: random, from a fixed seed (the raw baseline uses the same).
pub fn account_ids(accounts: usize) -> Vec<u64> {
    let mut state = 42;
    (0..accounts).map(|_| splitmix(&mut state)).collect()
}

/// Inserts `accounts` accounts with random ids (a fixed seed) and 1,000,000 each, through
/// `seed_accounts`; returns their ids.
pub fn seed_bank(engine: &mut Engine, accounts: usize) -> Vec<u64> {
    let ids = account_ids(accounts);
    for chunk in ids.chunks(10_000) {
        engine
            .call_reducer(
                "seed_accounts",
                Identity::ZERO,
                (chunk.to_vec(), 1_000_000i64),
            )
            .expect("seed accounts");
    }
    ids
}
