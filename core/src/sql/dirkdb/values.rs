//! DirkDB's value semantics (DIRKDB-DIALECT.md §5.2–§5.3, checked against the Java source's
//! `Expression`, `CompareOp`, `ArithmeticOp`, `GroupByHelper`), as SQL functions the server
//! registers on every SQLite connection and the translator calls for DirkDB's expressions:
//!
//! * comparisons never answer null: either side null → false (for `=` and `!=` alike); two
//!   values of one kind compare as Java's `equals` (doubles by bits, so `0.0` ≠ `-0.0`); two of
//!   different kinds, and every ordering, compare their "number of" (a string's truthiness);
//! * arithmetic is on doubles, never null: strings give their leading `digits[.digits]`, other
//!   values their truthiness (null → 0.0); a zero divisor is DirkDB's error;
//! * truthiness: null false, numbers ≠ 0, strings `true`/`1`/`yes`/`on`/`t`/`y` (trimmed,
//!   any case), anything else true;
//! * an aggregate outside `#vondrona` fails when a row is evaluated; `sum`/`avg` refuse strings.
//!
//! Inside one expression a boolean is a SQLite integer 1/0 (every rule above reads a boolean
//! through its number, 1.0/0.0, so `ary`, `na`, `!` and the operators answer the same). Where a
//! boolean leaves an expression — a select item, a `havaozy` value — it becomes a DirkDB
//! boolean value ([`Function::Bool`]): a BLOB of its own ([`BOOL_TRUE`]/[`BOOL_FALSE`]) that
//! stays a boolean through derived tables, views and set operations, is answered as JSON
//! `true`/`false`, and that no domain accepts (DirkDB's `NUMBER`, `VARCHAR`, `TANISA` and `DATE`
//! all refuse a `Boolean`), so it is never stored in a DirkDB table.

/// A relation page's JSON with numbers written as DirkDB's Java server writes its doubles
/// (`Double.toString`: `5.0`, `1.2345678E7`, `1.0E-4`, `-0.0`; DIRKDB-DIALECT.md §1). Numbers
/// SQLite holds as integers (written by English SQL) stay integers.
pub fn java_page_json(page: &crate::frame::RelationPage) -> serde_json::Result<String> {
    let mut out = Vec::with_capacity(256);
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, JavaNumbers);
    serde::Serialize::serialize(page, &mut serializer)?;
    // The serializer writes only UTF-8.
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// serde_json's compact formatter, doubles written the Java way.
struct JavaNumbers;

impl serde_json::ser::Formatter for JavaNumbers {
    fn write_f64<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        value: f64,
    ) -> std::io::Result<()> {
        writer.write_all(super::domain::java_double(value).as_bytes())
    }
}

/// A SQL value as the functions see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// null
    Null,
    /// An integer or a real (both are Java doubles to DirkDB).
    Number(f64),
    /// A string.
    Text(&'a str),
    /// A DirkDB boolean value (see [`BOOL_TRUE`]).
    Bool(bool),
    /// A BLOB (DirkDB has none; truthy, like any other Java object).
    Other,
}

/// The BLOB that stands for DirkDB's `true` once it leaves an expression.
pub const BOOL_TRUE: &[u8] = b"\0DirkDB:true";
/// The BLOB that stands for DirkDB's `false`.
pub const BOOL_FALSE: &[u8] = b"\0DirkDB:false";

/// The boolean a BLOB stands for, if it is one of DirkDB's.
pub fn blob_bool(bytes: &[u8]) -> Option<bool> {
    if bytes == BOOL_TRUE {
        Some(true)
    } else if bytes == BOOL_FALSE {
        Some(false)
    } else {
        None
    }
}

/// The BLOB of a DirkDB boolean.
pub fn bool_blob(b: bool) -> &'static [u8] {
    if b {
        BOOL_TRUE
    } else {
        BOOL_FALSE
    }
}

/// What a function answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Output {
    /// A boolean inside an expression, 1/0.
    Bool(bool),
    /// A boolean value leaving an expression ([`BOOL_TRUE`]/[`BOOL_FALSE`]).
    Boolean(bool),
    /// A double.
    Number(f64),
    /// The first argument unchanged.
    First,
    /// An integer.
    Integer(i64),
}

/// The SQL functions DirkDB's translation calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// unary `-`
    Neg,
    /// truthiness (WHERE, `#ka`, `!`, `ary`, `na`)
    Truth,
    /// `count(…)` & co. outside `#vondrona`: `(name, arg)`, fails for the first row
    RowAggregate,
    /// the argument of `sum`/`avg` under `#vondrona`: `(value, 'SUM')`, fails for a string
    Numeric,
    /// a boolean (1/0) leaving an expression, as DirkDB's boolean value
    Bool,
    /// Java's hash of a `#vondrona` key, `(v1, …, vn)` (GroupKey.hashCode)
    JavaHash,
}

impl Function {
    /// Every function, for registration.
    pub const ALL: [Function; 16] = [
        Function::Eq,
        Function::Ne,
        Function::Lt,
        Function::Le,
        Function::Gt,
        Function::Ge,
        Function::Add,
        Function::Sub,
        Function::Mul,
        Function::Div,
        Function::Neg,
        Function::Truth,
        Function::RowAggregate,
        Function::Numeric,
        Function::Bool,
        Function::JavaHash,
    ];

    /// Its SQL name.
    pub fn sql_name(self) -> &'static str {
        match self {
            Function::Eq => "dirkdb_eq",
            Function::Ne => "dirkdb_ne",
            Function::Lt => "dirkdb_lt",
            Function::Le => "dirkdb_le",
            Function::Gt => "dirkdb_gt",
            Function::Ge => "dirkdb_ge",
            Function::Add => "dirkdb_add",
            Function::Sub => "dirkdb_sub",
            Function::Mul => "dirkdb_mul",
            Function::Div => "dirkdb_div",
            Function::Neg => "dirkdb_neg",
            Function::Truth => "dirkdb_truth",
            Function::RowAggregate => "dirkdb_row_aggregate",
            Function::Numeric => "dirkdb_numeric",
            Function::Bool => "dirkdb_bool",
            Function::JavaHash => "dirkdb_java_hash",
        }
    }

    /// How many arguments it takes (-1: any number).
    pub fn arity(self) -> i32 {
        match self {
            Function::Neg | Function::Truth | Function::Bool => 1,
            Function::JavaHash => -1,
            _ => 2,
        }
    }

    /// Whether its answer depends on its arguments only and it never fails. The others are
    /// registered as non-deterministic so that SQLite never evaluates them ahead of the rows
    /// (DirkDB raises these errors only when a row is evaluated: none over an empty table).
    pub fn deterministic(self) -> bool {
        !matches!(
            self,
            Function::Div | Function::RowAggregate | Function::Numeric
        )
    }

    /// Applies it; `Err` is DirkDB's error text.
    pub fn call(self, args: &[Value<'_>]) -> Result<Output, String> {
        let arg = |i: usize| args.get(i).copied().unwrap_or(Value::Null);
        let (l, r) = (arg(0), arg(1));
        Ok(match self {
            Function::Eq => Output::Bool(equal(l, r)),
            Function::Ne => {
                Output::Bool(!matches!((l, r), (Value::Null, _) | (_, Value::Null)) && !equal(l, r))
            }
            Function::Lt => Output::Bool(ordered(l, r, |a, b| a < b)),
            Function::Le => Output::Bool(ordered(l, r, |a, b| a <= b)),
            Function::Gt => Output::Bool(ordered(l, r, |a, b| a > b)),
            Function::Ge => Output::Bool(ordered(l, r, |a, b| a >= b)),
            Function::Add => Output::Number(arithmetic_number(l) + arithmetic_number(r)),
            Function::Sub => Output::Number(arithmetic_number(l) - arithmetic_number(r)),
            Function::Mul => Output::Number(arithmetic_number(l) * arithmetic_number(r)),
            Function::Div => Output::Number(divide(arithmetic_number(l), arithmetic_number(r))?),
            Function::Neg => Output::Number(match l {
                Value::Number(n) => -n,
                other => -bool_number(truth(other)),
            }),
            Function::Truth => Output::Bool(truth(l)),
            Function::Bool => Output::Boolean(truth(l)),
            Function::JavaHash => Output::Integer(i64::from(java_key_hash(args))),
            Function::RowAggregate => {
                let name = match l {
                    Value::Text(t) => t,
                    _ => "?",
                };
                return Err(format!(
                    "Function '{name}' ne peut pas être évaluée ligne-par-ligne"
                ));
            }
            Function::Numeric => {
                let class = match l {
                    Value::Text(_) => "java.lang.String",
                    Value::Bool(_) => "java.lang.Boolean",
                    _ => return Ok(Output::First),
                };
                let which = match r {
                    Value::Text(t) => t,
                    _ => "SUM",
                };
                return Err(format!(
                    "{which} attend une valeur numérique, trouvé: {class}"
                ));
            }
        })
    }
}

/// Java's `String.hashCode` (over UTF-16 units).
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, u| h.wrapping_mul(31).wrapping_add(i32::from(u)))
}

/// Java's `Double.hashCode`.
pub fn java_double_hash(d: f64) -> i32 {
    let bits = d.to_bits();
    (bits ^ (bits >> 32)) as i32
}

/// Java's `hashCode` of a value as DirkDB holds it (numbers are `Double`s).
fn java_value_hash(v: Value<'_>) -> i32 {
    match v {
        Value::Null | Value::Other => 0,
        Value::Number(n) => java_double_hash(n),
        Value::Text(s) => java_string_hash(s),
        Value::Bool(b) => {
            if b {
                1231
            } else {
                1237
            }
        }
    }
}

/// DirkDB's `GroupKey.hashCode` of a `#vondrona` key.
fn java_key_hash(values: &[Value<'_>]) -> i32 {
    values.iter().fold(1i32, |h, v| {
        h.wrapping_mul(31).wrapping_add(java_value_hash(*v))
    })
}

/// The SQL name of the window function that numbers `#vondrona` groups in DirkDB's order.
pub const JAVA_ORDER_FUNCTION: &str = "dirkdb_java_order";

/// The window function [`JAVA_ORDER_FUNCTION`]`(hash) OVER (ORDER BY first_row ROWS BETWEEN
/// CURRENT ROW AND UNBOUNDED FOLLOWING)`: each group's position in the iteration of a
/// java.util.HashMap into which the groups were put in first-row order (DirkDB's
/// `GroupByHelper`), tree bins included (see [`super::java_hash`]). The frame starts at the
/// current row, so the groups inverted (left behind) so far say which one is current.
#[derive(Debug, Default)]
pub struct JavaOrder {
    hashes: Vec<i32>,
    left_behind: usize,
    positions: Option<Vec<usize>>,
}

impl JavaOrder {
    /// A group enters the frame (in first-row order).
    pub fn step(&mut self, hash: i32) {
        self.hashes.push(hash);
        self.positions = None;
    }

    /// The current group leaves the frame.
    pub fn inverse(&mut self) {
        self.left_behind += 1;
    }

    /// The current group's position in Java's iteration.
    pub fn value(&mut self) -> i64 {
        let hashes = &self.hashes;
        let positions = self.positions.get_or_insert_with(|| {
            let keys: Vec<(i32, super::java_hash::JavaKey<'_>)> = hashes
                .iter()
                .map(|&h| (h, super::java_hash::JavaKey::Opaque))
                .collect();
            let mut positions = vec![0; keys.len()];
            for (position, i) in super::java_hash::iteration_order(&keys)
                .into_iter()
                .enumerate()
            {
                positions[i] = position;
            }
            positions
        });
        positions.get(self.left_behind).map_or(0, |&p| p as i64)
    }
}

/// Java's `Expression.ObjectIntoBoolean`.
pub fn truth(v: Value<'_>) -> bool {
    match v {
        Value::Null => false,
        Value::Number(n) => n != 0.0,
        Value::Bool(b) => b,
        Value::Text(s) => matches!(
            s.trim().to_lowercase().as_str(),
            "true" | "1" | "yes" | "on" | "t" | "y"
        ),
        Value::Other => true,
    }
}

fn bool_number(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// The number a comparison reads: numbers as such, anything else its truthiness.
fn comparison_number(v: Value<'_>) -> f64 {
    match v {
        Value::Number(n) => n,
        other => bool_number(truth(other)),
    }
}

/// The number arithmetic reads: numbers as such, a string's leading `digits[.digits]`, anything
/// else its truthiness (null → 0.0).
pub fn arithmetic_number(v: Value<'_>) -> f64 {
    match v {
        Value::Number(n) => n,
        Value::Text(s) => leading_decimal(s).unwrap_or_else(|| bool_number(truth(v))),
        other => bool_number(truth(other)),
    }
}

fn leading_decimal(s: &str) -> Option<f64> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let mut end = digits;
    let bytes = s.as_bytes();
    if bytes.get(end) == Some(&b'.') {
        let frac = bytes[end + 1..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if frac > 0 {
            end += 1 + frac;
        }
    }
    s[..end].parse().ok()
}

fn equal(l: Value<'_>, r: Value<'_>) -> bool {
    match (l, r) {
        (Value::Null, _) | (_, Value::Null) => false,
        (Value::Number(a), Value::Number(b)) => {
            a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
        }
        (Value::Text(a), Value::Text(b)) => a == b,
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (a, b) => comparison_number(a) == comparison_number(b),
    }
}

fn ordered(l: Value<'_>, r: Value<'_>, holds: fn(f64, f64) -> bool) -> bool {
    match (l, r) {
        (Value::Null, _) | (_, Value::Null) => false,
        (a, b) => holds(comparison_number(a), comparison_number(b)),
    }
}

fn divide(numerator: f64, divisor: f64) -> Result<f64, String> {
    if divisor == 0.0 {
        return Err(format!(
            "division by zero numerator = {} / 0",
            super::domain::java_double(numerator)
        ));
    }
    Ok(numerator / divisor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Value::*;

    fn b(f: Function, l: Value<'_>, r: Value<'_>) -> bool {
        match f.call(&[l, r]) {
            Ok(Output::Bool(v)) => v,
            other => panic!("{other:?}"),
        }
    }

    fn n(f: Function, args: &[Value<'_>]) -> f64 {
        match f.call(args) {
            Ok(Output::Number(v)) => v,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn comparisons_follow_dirkdb() {
        assert!(!b(Function::Eq, Null, Null));
        assert!(!b(Function::Ne, Null, Number(1.0)));
        assert!(!b(Function::Eq, Number(5.0), Text("5")));
        assert!(b(Function::Eq, Number(1.0), Text("1")));
        assert!(b(Function::Eq, Number(1.0), Text("yes")));
        assert!(b(Function::Eq, Number(0.0), Text("abc")));
        assert!(!b(Function::Eq, Number(0.0), Number(-0.0)));
        assert!(b(Function::Eq, Text("a"), Text("a")));
        assert!(!b(Function::Eq, Text("a"), Text("A")));
        assert!(!b(Function::Gt, Text("b"), Text("a")));
        assert!(!b(Function::Lt, Text("s"), Text("c")));
        assert!(b(Function::Ge, Number(2.0), Number(2.0)));
        assert!(!b(Function::Gt, Null, Number(-1.0)));
    }

    #[test]
    fn arithmetic_on_doubles() {
        assert_eq!(n(Function::Add, &[Null, Number(1.0)]), 1.0);
        assert_eq!(n(Function::Add, &[Text("abc"), Number(1.0)]), 1.0);
        assert_eq!(n(Function::Add, &[Text("12abc"), Number(1.0)]), 13.0);
        assert_eq!(n(Function::Add, &[Text("2.5x"), Number(0.0)]), 2.5);
        assert_eq!(n(Function::Div, &[Number(7.0), Number(2.0)]), 3.5);
        assert_eq!(
            Function::Div.call(&[Number(1.0), Number(0.0)]),
            Err("division by zero numerator = 1.0 / 0".into())
        );
        let neg = n(Function::Neg, &[Null]);
        assert!(neg == 0.0 && neg.is_sign_negative());
        assert_eq!(n(Function::Neg, &[Text("yes")]), -1.0);
    }

    #[test]
    fn pages_write_java_doubles() {
        let page = crate::frame::RelationPage {
            name: Some("t".into()),
            page: 1,
            total_pages: 1,
            columns: vec![],
            rows: vec![vec![
                serde_json::json!(5.0),
                serde_json::json!(12345678.0),
                serde_json::json!(0.0001),
                serde_json::json!(-0.0),
                serde_json::json!(7),
                serde_json::json!("1.5E3"),
            ]],
        };
        let json = java_page_json(&page).unwrap();
        assert!(
            json.ends_with(r#""rows":[[5.0,1.2345678E7,1.0E-4,-0.0,7,"1.5E3"]]}"#),
            "{json}"
        );
        // Still JSON, and the same page for any reader.
        let back: crate::frame::RelationPage = serde_json::from_str(&json).unwrap();
        assert_eq!(back.rows[0][1], serde_json::json!(12345678.0));
    }

    #[test]
    fn java_hashes_and_hash_order() {
        assert_eq!(java_string_hash("Algo"), 2_043_507);
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_double_hash(3.0), 1_074_266_112);
        assert_eq!(java_double_hash(0.0), 0);
        // GroupKey of one value: 31 + its hash.
        assert_eq!(java_key_hash(&[Text("Algo")]), 31 + 2_043_507);
        assert_eq!(java_key_hash(&[Null]), 31);
        // DirkDB's td2 script groups Archi, Algo, Syst (first seen in that order) as Syst,
        // Archi, Algo (computed with Java's HashMap rules).
        let mut order = JavaOrder::default();
        for k in ["Archi", "Algo", "Syst"] {
            order.step(java_key_hash(&[Text(k)]));
        }
        let mut positions = Vec::new();
        for _ in 0..3 {
            positions.push(order.value());
            order.inverse();
        }
        assert_eq!(positions, [1, 2, 0]);
    }

    #[test]
    fn boolean_values() {
        assert_eq!(blob_bool(bool_blob(true)), Some(true));
        assert_eq!(blob_bool(bool_blob(false)), Some(false));
        assert_eq!(blob_bool(b"true"), None);
        assert_eq!(
            Function::Bool.call(&[Number(1.0)]),
            Ok(Output::Boolean(true))
        );
        assert_eq!(
            Function::Bool.call(&[Number(0.0)]),
            Ok(Output::Boolean(false))
        );
        assert!(b(Function::Eq, Bool(true), Bool(true)));
        assert!(!b(Function::Eq, Bool(true), Bool(false)));
        // A boolean against another kind compares through its number (Java's CompareOp).
        assert!(b(Function::Eq, Bool(true), Number(1.0)));
        assert!(b(Function::Eq, Bool(false), Number(-0.0)));
        assert!(b(Function::Eq, Bool(true), Text("yes")));
        assert_eq!(n(Function::Add, &[Bool(true), Number(1.0)]), 2.0);
        assert!(!truth(Bool(false)));
        assert_eq!(
            Function::Numeric.call(&[Bool(true), Text("SUM")]),
            Err("SUM attend une valeur numérique, trouvé: java.lang.Boolean".into())
        );
    }

    #[test]
    fn truthiness_and_aggregates() {
        assert!(truth(Text(" Yes ")));
        assert!(!truth(Text("no")));
        assert!(!truth(Null));
        assert!(truth(Other));
        assert_eq!(
            Function::RowAggregate.call(&[Text("count"), Null]),
            Err("Function 'count' ne peut pas être évaluée ligne-par-ligne".into())
        );
        assert_eq!(
            Function::Numeric.call(&[Text("x"), Text("AVG")]),
            Err("AVG attend une valeur numérique, trouvé: java.lang.String".into())
        );
        assert_eq!(
            Function::Numeric.call(&[Number(1.0), Text("SUM")]),
            Ok(Output::First)
        );
    }
}
