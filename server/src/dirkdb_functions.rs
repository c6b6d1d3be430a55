//! The SQL functions DirkDB's translated statements call (see `dirkdb_core::sql::dirkdb::values`
//! for their meaning), registered on every SQLite connection of the server: DirkDB's value
//! semantics for comparisons, arithmetic, truthiness and aggregates, with DirkDB's error texts.

use dirkdb_core::sql::dirkdb::values::{
    blob_bool, bool_blob, Function, JavaOrder, Output, Value, JAVA_ORDER_FUNCTION,
};
use rusqlite::functions::{Aggregate, Context, FunctionFlags, WindowAggregate};
use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::Connection;

/// Registers every DirkDB value function on `conn`.
pub(crate) fn register(conn: &Connection) -> rusqlite::Result<()> {
    for f in Function::ALL {
        let mut flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_INNOCUOUS;
        if f.deterministic() {
            flags |= FunctionFlags::SQLITE_DETERMINISTIC;
        }
        conn.create_scalar_function(f.sql_name(), f.arity(), flags, move |ctx| call(f, ctx))?;
    }
    conn.create_window_function(
        JAVA_ORDER_FUNCTION,
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_INNOCUOUS,
        JavaOrderWindow,
    )?;
    Ok(())
}

/// `dirkdb_java_order(hash) OVER (…)`: DirkDB's `#vondrona` group order ([`JavaOrder`]).
struct JavaOrderWindow;

impl Aggregate<JavaOrder, i64> for JavaOrderWindow {
    fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<JavaOrder> {
        Ok(JavaOrder::default())
    }

    fn step(&self, ctx: &mut Context<'_>, order: &mut JavaOrder) -> rusqlite::Result<()> {
        // dirkdb_java_hash answers an i32 as an integer.
        order.step(ctx.get::<i64>(0)? as i32);
        Ok(())
    }

    fn finalize(&self, _: &mut Context<'_>, order: Option<JavaOrder>) -> rusqlite::Result<i64> {
        Ok(order.map_or(0, |mut o| o.value()))
    }
}

impl WindowAggregate<JavaOrder, i64> for JavaOrderWindow {
    fn value(&self, order: Option<&mut JavaOrder>) -> rusqlite::Result<i64> {
        Ok(order.map_or(0, |o| o.value()))
    }

    fn inverse(&self, _: &mut Context<'_>, order: &mut JavaOrder) -> rusqlite::Result<()> {
        order.inverse();
        Ok(())
    }
}

fn call(f: Function, ctx: &Context<'_>) -> rusqlite::Result<SqlValue> {
    let raw: Vec<ValueRef<'_>> = (0..ctx.len()).map(|i| ctx.get_raw(i)).collect();
    let texts: Vec<Option<String>> = raw
        .iter()
        .map(|v| match v {
            ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
            _ => None,
        })
        .collect();
    let args: Vec<Value<'_>> = raw
        .iter()
        .zip(&texts)
        .map(|(v, text)| match (v, text) {
            (ValueRef::Null, _) => Value::Null,
            (ValueRef::Integer(n), _) => Value::Number(*n as f64),
            (ValueRef::Real(r), _) => Value::Number(*r),
            (ValueRef::Text(_), Some(t)) => Value::Text(t),
            (ValueRef::Blob(b), _) => blob_bool(b).map_or(Value::Other, Value::Bool),
            _ => Value::Other,
        })
        .collect();
    match f.call(&args) {
        Ok(Output::Bool(b)) => Ok(SqlValue::Integer(i64::from(b))),
        Ok(Output::Boolean(b)) => Ok(SqlValue::Blob(bool_blob(b).to_vec())),
        Ok(Output::Number(n)) => Ok(SqlValue::Real(n)),
        Ok(Output::First) => Ok(raw.first().map_or(SqlValue::Null, |v| owned(*v))),
        Ok(Output::Integer(n)) => Ok(SqlValue::Integer(n)),
        Err(text) => Err(rusqlite::Error::UserFunctionError(text.into())),
    }
}

fn owned(v: ValueRef<'_>) -> SqlValue {
    match v {
        ValueRef::Null => SqlValue::Null,
        ValueRef::Integer(n) => SqlValue::Integer(n),
        ValueRef::Real(r) => SqlValue::Real(r),
        ValueRef::Text(t) => SqlValue::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
    }
}
