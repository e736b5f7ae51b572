//! The crash-test bank: a fixed set of accounts, transfers between them, and a transfer log
//! written in the same transaction as the balances, so that a recovered database can be checked
//! for lost, invented or half-applied transfers.

use std::collections::{BTreeMap, HashSet};

use orrery_engine::prelude::*;

/// Number of accounts created by `init`.
pub const ACCOUNTS: u32 = 16;
/// Opening balance of every account.
pub const INITIAL_BALANCE: i64 = 1_000;

/// An account.
#[table(name = account)]
#[derive(Clone, Debug, PartialEq)]
pub struct Account {
    /// Account number, `0..ACCOUNTS`.
    #[primary_key]
    pub id: u32,
    /// Balance; never negative.
    pub balance: i64,
}

/// One committed transfer, keyed by the client's request id.
#[table(name = transfer_log)]
#[derive(Clone, Debug, PartialEq)]
pub struct TransferLog {
    /// The request id the client sent.
    #[primary_key]
    pub request_id: u64,
    /// Source account.
    pub from: u32,
    /// Target account.
    pub to: u32,
    /// Amount moved.
    pub amount: i64,
}

/// Creates the accounts.
#[reducer(init)]
pub fn init(ctx: &mut ReducerContext) -> Result<(), String> {
    for id in 0..ACCOUNTS {
        ctx.db.account().insert(Account {
            id,
            balance: INITIAL_BALANCE,
        })?;
    }
    Ok(())
}

/// Moves `amount` from `from` to `to` and logs it under `request_id`; fails without writing
/// if the source cannot pay.
#[reducer]
pub fn transfer(
    ctx: &mut ReducerContext,
    request_id: u64,
    from: u32,
    to: u32,
    amount: i64,
) -> Result<(), String> {
    if from == to || amount <= 0 {
        return Err("invalid transfer".into());
    }
    let mut a = ctx.db.account().id().find(&from).ok_or("no such account")?;
    let mut b = ctx.db.account().id().find(&to).ok_or("no such account")?;
    if a.balance < amount {
        return Err("insufficient funds".into());
    }
    a.balance -= amount;
    b.balance += amount;
    ctx.db.account().id().update(a)?;
    ctx.db.transfer_log().insert(TransferLog {
        request_id,
        from,
        to,
        amount,
    })?;
    ctx.db.account().id().update(b)?;
    Ok(())
}

/// The bank module.
pub fn module() -> Module {
    Module::builder("crash-bank")
        .table::<Account>()
        .table::<TransferLog>()
        .reducers(reducers![init, transfer])
        .build()
        .expect("valid module")
}

/// The argument bytes of a `transfer` call.
pub fn transfer_args(request_id: u64, from: u32, to: u32, amount: i64) -> Vec<u8> {
    let mut args = Vec::new();
    request_id.encode(&mut args);
    from.encode(&mut args);
    to.encode(&mut args);
    amount.encode(&mut args);
    args
}

/// What [`verify`] checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verified {
    /// Transfers in the log.
    pub logged: usize,
    /// Acknowledged-ok transfers found in the log.
    pub acked_ok: usize,
    /// Acknowledged-err transfers confirmed absent.
    pub acked_err: usize,
}

/// Checks a recovered bank: every acknowledged transfer is present and every rejected one
/// absent, the total balance is conserved, every balance equals its opening balance plus the
/// logged transfers (so no transfer is half-applied or applied without its log row), and the
/// indexes are exact.
pub fn verify(
    engine: &mut Engine,
    acked_ok: &HashSet<u64>,
    acked_err: &HashSet<u64>,
) -> Result<Verified, String> {
    engine.check_integrity()?;
    let accounts = engine.rows::<Account>();
    if accounts.len() != ACCOUNTS as usize {
        return Err(format!("{} accounts, expected {ACCOUNTS}", accounts.len()));
    }
    let total: i64 = accounts.iter().map(|a| a.balance).sum();
    if total != i64::from(ACCOUNTS) * INITIAL_BALANCE {
        return Err(format!("total balance {total} is not conserved"));
    }
    let log = engine.rows::<TransferLog>();
    let logged: HashSet<u64> = log.iter().map(|t| t.request_id).collect();
    if let Some(missing) = acked_ok.iter().find(|id| !logged.contains(id)) {
        return Err(format!(
            "transfer {missing} was acknowledged as durable but is missing"
        ));
    }
    if let Some(present) = acked_err.iter().find(|id| logged.contains(id)) {
        return Err(format!("transfer {present} was rejected but is present"));
    }
    let mut expected: BTreeMap<u32, i64> = (0..ACCOUNTS).map(|id| (id, INITIAL_BALANCE)).collect();
    for t in &log {
        *expected.entry(t.from).or_default() -= t.amount;
        *expected.entry(t.to).or_default() += t.amount;
    }
    for account in &accounts {
        let want = expected.get(&account.id).copied().unwrap_or_default();
        if account.balance != want || account.balance < 0 {
            return Err(format!(
                "account {} holds {} but its logged transfers give {want}",
                account.id, account.balance
            ));
        }
    }
    Ok(Verified {
        logged: log.len(),
        acked_ok: acked_ok.len(),
        acked_err: acked_err.len(),
    })
}
