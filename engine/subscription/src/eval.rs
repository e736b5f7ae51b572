//! Evaluating a query condition against a row's decoded column values.

use std::cmp::Ordering;

use crate::sql::{CmpOp, Condition, Operand};
use orrery_row::Identity;
use orrery_row::Value;

fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Unsigned(x), Value::Unsigned(y)) => Some(x.cmp(y)),
        (Value::Signed(x), Value::Signed(y)) => Some(x.cmp(y)),
        (Value::F32(x), Value::F32(y)) => x.partial_cmp(y),
        (Value::F64(x), Value::F64(y)) => x.partial_cmp(y),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Timestamp(x), Value::Timestamp(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Identity(x), Value::Identity(y)) => Some(x.cmp(y)),
        (Value::ConnectionId(x), Value::ConnectionId(y)) => Some(x.cmp(y)),
        (Value::Enum { tag: x, .. }, Value::Enum { tag: y, .. }) => Some(x.cmp(y)),
        _ => None,
    }
}

impl Condition {
    /// Whether a row with column values `row` satisfies the condition for subscriber `sender`.
    /// Comparisons that cannot be made (NaN, mismatched types) are false.
    pub fn matches(&self, row: &[Value], sender: Identity) -> bool {
        match self {
            Condition::And(a, b) => a.matches(row, sender) && b.matches(row, sender),
            Condition::Or(a, b) => a.matches(row, sender) || b.matches(row, sender),
            Condition::Compare { column, op, rhs } => {
                let Some(value) = row.get(*column) else {
                    return false;
                };
                let sender_value;
                let rhs = match rhs {
                    Operand::Literal(v) => v,
                    Operand::Sender => {
                        sender_value = Value::Identity(sender);
                        &sender_value
                    }
                };
                let Some(ordering) = compare(value, rhs) else {
                    return false;
                };
                match op {
                    CmpOp::Eq => ordering == Ordering::Equal,
                    CmpOp::Ne => ordering != Ordering::Equal,
                    CmpOp::Lt => ordering == Ordering::Less,
                    CmpOp::Le => ordering != Ordering::Greater,
                    CmpOp::Gt => ordering == Ordering::Greater,
                    CmpOp::Ge => ordering != Ordering::Less,
                }
            }
        }
    }
}
