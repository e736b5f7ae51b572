//! The subscription SQL subset, parsed with `sqlparser` and checked against the schema:
//!
//! ```sql
//! SELECT * FROM t [WHERE <condition>]
//! ```
//!
//! where a condition combines `column <op> operand` (`=`, `<>`/`!=`, `<`, `<=`, `>`, `>=`) with
//! `AND`, `OR` and parentheses. Operands are literals (numbers, `'strings'`, `TRUE`/`FALSE`;
//! an identity as a hex string; an enum by variant name) or `:sender` (the subscriber's
//! identity). One spatial predicate `within(column, :focus, radius)` may be `AND`ed at the top
//! level. Anything else is an error that names the unsupported part.
//!
//! Queries come from untrusted clients, so [`QueryLimits`] are checked on the token stream
//! before the parser (which recurses) sees the text: a query longer than the byte limit is
//! refused without being read, and one with too many predicates or too deep a nesting is
//! refused before any tree is built. Every tree the parser then builds is at most a few times
//! the predicate limit deep, so the recursive passes over it (checks, display, evaluation,
//! drop) stay bounded.

use sqlparser::ast::{
    BinaryOperator, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, ObjectName,
    Query, Select, SelectItem, SetExpr, Statement, TableFactor, UnaryOperator, Value as SqlValue,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

use orrery_row::Identity;
use orrery_row::Timestamp;
use orrery_row::TypeDesc;
use orrery_row::Value;
use orrery_row::{ModuleSchema, TableSchema, Visibility};

/// Why a query was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// Not SQL.
    #[error("SQL syntax error: {0}")]
    Syntax(String),
    /// Valid SQL outside the supported subset.
    #[error("unsupported SQL: {0}")]
    Unsupported(String),
    /// No such table.
    #[error("no table named {0:?}")]
    UnknownTable(String),
    /// A private table.
    #[error("table {0:?} is private")]
    PrivateTable(String),
    /// No such column.
    #[error("table {table:?} has no column {column:?}")]
    UnknownColumn {
        /// The table.
        table: String,
        /// The column named.
        column: String,
    },
    /// The query is larger than a configured limit allows.
    #[error("query exceeds the {limit} limit: {value} > {max}")]
    Limit {
        /// Which limit (`sql_bytes`, `predicates`, `nesting_depth`, `within_radius`, ...).
        limit: &'static str,
        /// What the query has (rounded up for radii).
        value: u64,
        /// The configured maximum.
        max: u64,
    },
    /// A comparison or literal that does not fit the column's type.
    #[error("column {column:?} ({ty}): {problem}")]
    Type {
        /// The column.
        column: String,
        /// Its type.
        ty: String,
        /// What does not fit.
        problem: String,
    },
}

/// How large a query from a client may be. Checked before parsing; every refusal is a
/// [`QueryError::Limit`] naming the limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QueryLimits {
    /// Longest query text, in bytes.
    pub max_sql_bytes: usize,
    /// Most predicates (comparisons and `within`) in one query.
    pub max_predicates: usize,
    /// Deepest nesting of parentheses.
    pub max_depth: usize,
    /// Largest `within` radius, in world units.
    pub max_radius: f32,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            max_sql_bytes: 4096,
            max_predicates: 64,
            max_depth: 16,
            max_radius: 1000.0,
        }
    }
}

/// sqlparser's own guard against deep expressions (its default): the token checks keep
/// queries well inside it, and it bounds the parser's stack use.
const PARSER_RECURSION_LIMIT: usize = 50;

/// Tokens per predicate a well-formed query needs at most (`(`, column, operator, literal,
/// `)`, `AND`, and a few for `within(col, :focus, r)`); more tokens than this budget allows
/// is not a query worth parsing.
const TOKENS_PER_PREDICATE: usize = 16;

fn limit(limit: &'static str, value: usize, max: usize) -> Result<(), QueryError> {
    if value > max {
        Err(QueryError::Limit {
            limit,
            value: value as u64,
            max: max as u64,
        })
    } else {
        Ok(())
    }
}

/// Checks `sql` against `limits` without parsing it: its length, then (tokenizing, which
/// does not recurse) its predicate count, nesting depth and token count. Returns the
/// number of predicates.
pub fn check_limits(sql: &str, limits: &QueryLimits) -> Result<usize, QueryError> {
    limit("sql_bytes", sql.len(), limits.max_sql_bytes)?;
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize()
        .map_err(|e| QueryError::Syntax(e.to_string()))?;
    let (mut predicates, mut deepest, mut counted) = (0usize, 0usize, 0usize);
    // Open parentheses, each marked whether it nests the condition (`within`'s argument list
    // does not).
    let mut open: Vec<bool> = Vec::new();
    let mut depth = 0usize;
    let mut after_within = false;
    for token in &tokens {
        if matches!(token, Token::Whitespace(_)) {
            continue;
        }
        match token {
            Token::Eq
            | Token::DoubleEq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq
            | Token::Spaceship => predicates += 1,
            Token::Word(w) if w.value.eq_ignore_ascii_case("within") => predicates += 1,
            Token::LParen => {
                let nests = !after_within;
                open.push(nests);
                if nests {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
            }
            Token::RParen if open.pop() == Some(true) => depth -= 1,
            _ => {}
        }
        after_within = matches!(token, Token::Word(w) if w.value.eq_ignore_ascii_case("within"));
        counted += 1;
    }
    limit("predicates", predicates, limits.max_predicates)?;
    limit("nesting_depth", deepest, limits.max_depth)?;
    limit(
        "tokens",
        counted,
        limits
            .max_predicates
            .saturating_add(1)
            .saturating_mul(TOKENS_PER_PREDICATE),
    )?;
    Ok(predicates)
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    /// `=`
    Eq,
    /// `<>` or `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// The right-hand side of a comparison.
#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    /// A literal, already converted to the column's type.
    Literal(Value),
    /// The subscriber's identity.
    Sender,
}

/// A row condition.
#[derive(Clone, Debug, PartialEq)]
pub enum Condition {
    /// Both hold.
    And(Box<Condition>, Box<Condition>),
    /// Either holds.
    Or(Box<Condition>, Box<Condition>),
    /// `column op operand`.
    Compare {
        /// Column index.
        column: usize,
        /// Operator.
        op: CmpOp,
        /// Right-hand side.
        rhs: Operand,
    },
}

/// `within(column, :focus, radius)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Within {
    /// The `Vec2`/`Vec3` column.
    pub column: usize,
    /// The radius.
    pub radius: f32,
}

/// A parsed, schema-checked subscription query.
#[derive(Clone, Debug, PartialEq)]
pub struct SubscriptionQuery {
    /// Table id.
    pub table: u32,
    /// The row condition besides the spatial one (`None` = every row).
    pub condition: Option<Condition>,
    /// The spatial predicate, if any.
    pub within: Option<Within>,
    /// Whether the query depends on the subscriber (uses `:sender`).
    pub uses_sender: bool,
    /// The text the query was parsed from, normalised.
    pub canonical: String,
    /// Predicates (comparisons and `within`) in the query: its evaluation cost.
    pub predicates: usize,
}

impl SubscriptionQuery {
    /// Parses `sql` against `schema`, within `limits` (checked first, see [`check_limits`]).
    /// Visibility rules are not applied here; the subscription layer adds the owner filter to
    /// every query on an `owner = col` table.
    pub fn parse(
        schema: &ModuleSchema,
        sql: &str,
        limits: &QueryLimits,
    ) -> Result<SubscriptionQuery, QueryError> {
        let predicates = check_limits(sql, limits)?;
        let statements = Parser::new(&GenericDialect {})
            .with_recursion_limit(PARSER_RECURSION_LIMIT)
            .try_with_sql(sql)
            .and_then(|mut parser| parser.parse_statements())
            .map_err(|e| QueryError::Syntax(e.to_string()))?;
        let statement = match statements.as_slice() {
            [one] => one,
            [] => return Err(QueryError::Syntax("empty query".into())),
            _ => return Err(QueryError::Unsupported("more than one statement".into())),
        };
        let Statement::Query(query) = statement else {
            return Err(QueryError::Unsupported(format!(
                "only SELECT is supported, got `{}`",
                first_words(&statement.to_string())
            )));
        };
        let select = check_query_shape(query)?;
        let table = single_table(select)?;
        let table_schema = schema
            .table(&table)
            .ok_or_else(|| QueryError::UnknownTable(table.clone()))?;
        if table_schema.visibility == Visibility::Private {
            return Err(QueryError::PrivateTable(table));
        }
        let mut parsed = SubscriptionQuery {
            table: table_schema.id,
            condition: None,
            within: None,
            uses_sender: false,
            canonical: String::new(),
            predicates,
        };
        if let Some(selection) = &select.selection {
            let mut conjuncts = Vec::new();
            split_and(selection, &mut conjuncts);
            let mut rest = Vec::new();
            for conjunct in conjuncts {
                if let Some(within) = parse_within(table_schema, conjunct, limits)? {
                    if parsed.within.replace(within).is_some() {
                        return Err(QueryError::Unsupported(
                            "more than one within(..) predicate".into(),
                        ));
                    }
                } else {
                    rest.push(parse_condition(
                        table_schema,
                        conjunct,
                        &mut parsed.uses_sender,
                    )?);
                }
            }
            parsed.condition = rest
                .into_iter()
                .reduce(|a, b| Condition::And(Box::new(a), Box::new(b)));
        }
        let canonical = format!(
            "SELECT * FROM {}{}",
            table_schema.name,
            select
                .selection
                .as_ref()
                .map(|s| format!(" WHERE {s}"))
                .unwrap_or_default()
        );
        // Whatever the checks above did not look at must not change the statement.
        if normalise(&canonical) != normalise(&statement.to_string()) {
            return Err(QueryError::Unsupported(format!(
                "clauses beyond SELECT * FROM {} [WHERE ..] in `{}`",
                table_schema.name, statement
            )));
        }
        parsed.canonical = canonical;
        Ok(parsed)
    }
}

fn first_words(text: &str) -> String {
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn normalise(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn check_query_shape(query: &Query) -> Result<&Select, QueryError> {
    let unsupported = |what: &str| Err(QueryError::Unsupported(what.to_owned()));
    if query.with.is_some() {
        return unsupported("WITH");
    }
    if query.order_by.is_some() {
        return unsupported("ORDER BY");
    }
    if query.limit_clause.is_some() || query.fetch.is_some() {
        return unsupported("LIMIT/OFFSET/FETCH");
    }
    if !query.locks.is_empty() {
        return unsupported("FOR UPDATE/SHARE");
    }
    let select = match query.body.as_ref() {
        SetExpr::Select(select) => select.as_ref(),
        SetExpr::SetOperation { op, .. } => {
            return Err(QueryError::Unsupported(format!("{op}")));
        }
        SetExpr::Query(_) => return unsupported("a parenthesised subquery"),
        SetExpr::Values(_) => return unsupported("VALUES"),
        other => return Err(QueryError::Unsupported(format!("`{other}`"))),
    };
    if select.distinct.is_some() {
        return unsupported("DISTINCT");
    }
    if select.top.is_some() {
        return unsupported("TOP");
    }
    if !matches!(select.projection.as_slice(), [SelectItem::Wildcard(_)]) {
        let items: Vec<String> = select.projection.iter().map(ToString::to_string).collect();
        return Err(QueryError::Unsupported(format!(
            "column list `{}` (only SELECT * is supported)",
            items.join(", ")
        )));
    }
    if !matches!(&select.group_by, GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty()) {
        return unsupported("GROUP BY");
    }
    if select.having.is_some() {
        return unsupported("HAVING");
    }
    Ok(select)
}

fn single_table(select: &Select) -> Result<String, QueryError> {
    let [from] = select.from.as_slice() else {
        return Err(QueryError::Unsupported(if select.from.is_empty() {
            "SELECT without FROM".into()
        } else {
            "more than one table in FROM".into()
        }));
    };
    if !from.joins.is_empty() {
        return Err(QueryError::Unsupported("JOIN".into()));
    }
    match &from.relation {
        TableFactor::Table {
            name, alias: None, ..
        } => object_name(name),
        TableFactor::Table { alias: Some(a), .. } => {
            Err(QueryError::Unsupported(format!("table alias `{a}`")))
        }
        other => Err(QueryError::Unsupported(format!("FROM `{other}`"))),
    }
}

fn object_name(name: &ObjectName) -> Result<String, QueryError> {
    match name.0.as_slice() {
        [part] => Ok(part
            .as_ident()
            .map(|i| i.value.clone())
            .unwrap_or_else(|| part.to_string())),
        _ => Err(QueryError::Unsupported(format!("qualified name `{name}`"))),
    }
}

fn split_and<'e>(expr: &'e Expr, out: &mut Vec<&'e Expr>) {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            split_and(left, out);
            split_and(right, out);
        }
        Expr::Nested(inner)
            if matches!(
                inner.as_ref(),
                Expr::BinaryOp {
                    op: BinaryOperator::And,
                    ..
                }
            ) =>
        {
            split_and(inner, out)
        }
        other => out.push(other),
    }
}

fn column_index(table: &TableSchema, expr: &Expr) -> Result<usize, QueryError> {
    let name = match expr {
        Expr::Identifier(ident) => ident.value.clone(),
        Expr::CompoundIdentifier(parts) => match parts.as_slice() {
            [t, c] if t.value == table.name => c.value.clone(),
            _ => {
                return Err(QueryError::Unsupported(format!(
                    "column reference `{expr}`"
                )));
            }
        },
        other => {
            return Err(QueryError::Unsupported(format!(
                "`{other}` where a column was expected"
            )));
        }
    };
    table
        .column(&name)
        .map(|(i, _)| i)
        .ok_or_else(|| QueryError::UnknownColumn {
            table: table.name.clone(),
            column: name,
        })
}

fn is_placeholder(expr: &Expr, name: &str) -> bool {
    matches!(expr, Expr::Value(v) if matches!(&v.value, SqlValue::Placeholder(p) if p.eq_ignore_ascii_case(name)))
}

fn parse_within(
    table: &TableSchema,
    expr: &Expr,
    limits: &QueryLimits,
) -> Result<Option<Within>, QueryError> {
    let Expr::Function(function) = expr else {
        return Ok(None);
    };
    if !function.name.to_string().eq_ignore_ascii_case("within") {
        return Err(QueryError::Unsupported(format!(
            "function `{}` (only within(column, :focus, radius) is supported)",
            function.name
        )));
    }
    let FunctionArguments::List(list) = &function.args else {
        return Err(QueryError::Unsupported(format!("`{expr}`")));
    };
    let args: Vec<&Expr> = list
        .args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e),
            other => Err(QueryError::Unsupported(format!(
                "within argument `{other}`"
            ))),
        })
        .collect::<Result<_, _>>()?;
    let [column, focus, radius] = args.as_slice() else {
        return Err(QueryError::Unsupported(
            "within takes exactly (column, :focus, radius)".into(),
        ));
    };
    let column = column_index(table, column)?;
    let ty = &table.columns[column].ty;
    if !matches!(ty, TypeDesc::Vec2 | TypeDesc::Vec3) {
        return Err(QueryError::Type {
            column: table.columns[column].name.clone(),
            ty: ty.display_name(),
            problem: "within(..) needs a Vec2 or Vec3 column".into(),
        });
    }
    if !is_placeholder(focus, ":focus") {
        return Err(QueryError::Unsupported(format!(
            "within's second argument must be :focus, got `{focus}`"
        )));
    }
    let radius = number_literal(radius)
        .and_then(|text| text.parse::<f32>().ok())
        .filter(|r| r.is_finite() && *r >= 0.0)
        .ok_or_else(|| {
            QueryError::Unsupported(format!(
                "within's radius must be a non-negative number, got `{radius}`"
            ))
        })?;
    if radius > limits.max_radius {
        return Err(QueryError::Limit {
            limit: "within_radius",
            value: radius.ceil() as u64,
            max: limits.max_radius as u64,
        });
    }
    Ok(Some(Within { column, radius }))
}

/// The text of a (possibly negated) number literal.
fn number_literal(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Value(v) => match &v.value {
            SqlValue::Number(text, _) => Some(text.clone()),
            _ => None,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => number_literal(expr).map(|t| format!("-{t}")),
        Expr::UnaryOp {
            op: UnaryOperator::Plus,
            expr,
        } => number_literal(expr),
        _ => None,
    }
}

fn parse_condition(
    table: &TableSchema,
    expr: &Expr,
    uses_sender: &mut bool,
) -> Result<Condition, QueryError> {
    match expr {
        Expr::Nested(inner) => parse_condition(table, inner, uses_sender),
        Expr::BinaryOp { left, op, right } => {
            let cmp = match op {
                BinaryOperator::And | BinaryOperator::Or => {
                    let l = parse_condition(table, left, uses_sender)?;
                    let r = parse_condition(table, right, uses_sender)?;
                    return Ok(if *op == BinaryOperator::And {
                        Condition::And(Box::new(l), Box::new(r))
                    } else {
                        Condition::Or(Box::new(l), Box::new(r))
                    });
                }
                BinaryOperator::Eq => CmpOp::Eq,
                BinaryOperator::NotEq => CmpOp::Ne,
                BinaryOperator::Lt => CmpOp::Lt,
                BinaryOperator::LtEq => CmpOp::Le,
                BinaryOperator::Gt => CmpOp::Gt,
                BinaryOperator::GtEq => CmpOp::Ge,
                other => return Err(QueryError::Unsupported(format!("operator `{other}`"))),
            };
            // Accept `literal op column` by flipping it.
            let (column_expr, operand_expr, cmp) = if column_index(table, left).is_ok()
                || !matches!(
                    right.as_ref(),
                    Expr::Identifier(_) | Expr::CompoundIdentifier(_)
                ) {
                (left.as_ref(), right.as_ref(), cmp)
            } else {
                (right.as_ref(), left.as_ref(), flip(cmp))
            };
            let column = column_index(table, column_expr)?;
            let rhs = parse_operand(table, column, cmp, operand_expr, uses_sender)?;
            Ok(Condition::Compare {
                column,
                op: cmp,
                rhs,
            })
        }
        Expr::Function(_) => Err(QueryError::Unsupported(
            "within(..) must be ANDed with the rest of the condition at the top level".into(),
        )),
        other => Err(QueryError::Unsupported(format!("condition `{other}`"))),
    }
}

fn flip(op: CmpOp) -> CmpOp {
    match op {
        CmpOp::Lt => CmpOp::Gt,
        CmpOp::Le => CmpOp::Ge,
        CmpOp::Gt => CmpOp::Lt,
        CmpOp::Ge => CmpOp::Le,
        same => same,
    }
}

fn parse_operand(
    table: &TableSchema,
    column: usize,
    op: CmpOp,
    expr: &Expr,
    uses_sender: &mut bool,
) -> Result<Operand, QueryError> {
    let col = &table.columns[column];
    let type_error = |problem: String| QueryError::Type {
        column: col.name.clone(),
        ty: col.ty.display_name(),
        problem,
    };
    let ordered = matches!(
        col.ty,
        TypeDesc::U8
            | TypeDesc::U16
            | TypeDesc::U32
            | TypeDesc::U64
            | TypeDesc::I8
            | TypeDesc::I16
            | TypeDesc::I32
            | TypeDesc::I64
            | TypeDesc::F32
            | TypeDesc::F64
            | TypeDesc::String
            | TypeDesc::Timestamp
    );
    if !matches!(op, CmpOp::Eq | CmpOp::Ne) && !ordered {
        return Err(type_error(format!("{op:?} needs an ordered column type")));
    }
    if is_placeholder(expr, ":sender") {
        if col.ty != TypeDesc::Identity {
            return Err(type_error(":sender is an Identity".into()));
        }
        *uses_sender = true;
        return Ok(Operand::Sender);
    }
    if let Expr::Value(v) = expr
        && let SqlValue::Placeholder(p) = &v.value
    {
        return Err(QueryError::Unsupported(format!(
            "parameter {p} (only :sender, and :focus inside within)"
        )));
    }
    let literal = literal_value(&col.ty, expr).map_err(type_error)?;
    Ok(Operand::Literal(literal))
}

fn literal_value(ty: &TypeDesc, expr: &Expr) -> Result<Value, String> {
    let number = number_literal(expr);
    let string = match expr {
        Expr::Value(v) => match &v.value {
            SqlValue::SingleQuotedString(s) | SqlValue::DoubleQuotedString(s) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    };
    let boolean = match expr {
        Expr::Value(v) => match &v.value {
            SqlValue::Boolean(b) => Some(*b),
            _ => None,
        },
        _ => None,
    };
    let bad = || format!("cannot compare with `{expr}`");
    let in_range = |min: i128, max: i128| -> Result<i128, String> {
        let n: i128 = number
            .as_deref()
            .and_then(|t| t.parse().ok())
            .ok_or_else(bad)?;
        if (min..=max).contains(&n) {
            Ok(n)
        } else {
            Err(format!("{n} is out of range"))
        }
    };
    Ok(match ty {
        TypeDesc::Bool => Value::Bool(boolean.ok_or_else(bad)?),
        TypeDesc::U8 => Value::Unsigned(in_range(0, i128::from(u8::MAX))? as u64),
        TypeDesc::U16 => Value::Unsigned(in_range(0, i128::from(u16::MAX))? as u64),
        TypeDesc::U32 => Value::Unsigned(in_range(0, i128::from(u32::MAX))? as u64),
        TypeDesc::U64 | TypeDesc::ConnectionId => {
            Value::Unsigned(in_range(0, i128::from(u64::MAX))? as u64)
        }
        TypeDesc::I8 => Value::Signed(in_range(i128::from(i8::MIN), i128::from(i8::MAX))? as i64),
        TypeDesc::I16 => {
            Value::Signed(in_range(i128::from(i16::MIN), i128::from(i16::MAX))? as i64)
        }
        TypeDesc::I32 => {
            Value::Signed(in_range(i128::from(i32::MIN), i128::from(i32::MAX))? as i64)
        }
        TypeDesc::I64 => {
            Value::Signed(in_range(i128::from(i64::MIN), i128::from(i64::MAX))? as i64)
        }
        TypeDesc::Timestamp => Value::Timestamp(Timestamp::from_micros(in_range(
            i128::from(i64::MIN),
            i128::from(i64::MAX),
        )? as i64)),
        TypeDesc::F32 => Value::F32(number.and_then(|t| t.parse().ok()).ok_or_else(bad)?),
        TypeDesc::F64 => Value::F64(number.and_then(|t| t.parse().ok()).ok_or_else(bad)?),
        TypeDesc::String => Value::String(string.ok_or_else(bad)?),
        TypeDesc::Identity => Value::Identity(
            string
                .as_deref()
                .and_then(|s| Identity::from_hex(s).ok())
                .ok_or_else(|| format!("`{expr}` is not a 64-digit hex identity"))?,
        ),
        TypeDesc::Enum { variants, .. } => {
            let name = string.ok_or_else(bad)?;
            let (tag, variant) = variants
                .iter()
                .enumerate()
                .find(|(_, v)| v.name == name)
                .ok_or_else(|| format!("no variant named {name:?}"))?;
            if !variant.fields.is_empty() {
                return Err(format!(
                    "variant {name} has fields; only unit variants compare"
                ));
            }
            Value::Enum {
                tag: tag as u32,
                fields: Vec::new(),
            }
        }
        other => {
            return Err(format!(
                "{} columns cannot be compared",
                other.display_name()
            ));
        }
    })
}
