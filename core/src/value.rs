//! How SQL values are written in a page's JSON `rows`.
//!
//! INTEGER and finite REAL values are JSON numbers, TEXT is a JSON string, NULL is `null`. JSON has
//! no binary type and no infinities, so a BLOB is written as `{"blob":"<lowercase hex>"}` (the same
//! digits as SQLite's `X'…'` literal) and a non-finite REAL as the string `"Infinity"` or
//! `"-Infinity"` (SQLite turns NaN into NULL itself).

use serde_json::Value;

/// The JSON form of a REAL.
pub fn real(value: f64) -> Value {
    serde_json::Number::from_f64(value)
        .map(Value::Number)
        .unwrap_or_else(|| {
            let text = if value.is_nan() {
                "NaN"
            } else if value > 0.0 {
                "Infinity"
            } else {
                "-Infinity"
            };
            Value::String(text.into())
        })
}

/// The JSON form of a BLOB.
pub fn blob(bytes: &[u8]) -> Value {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        hex.push(HEX[usize::from(b >> 4)] as char);
        hex.push(HEX[usize::from(b & 0xf)] as char);
    }
    serde_json::json!({ "blob": hex })
}

/// How a client shows a cell: text as is, BLOBs as `X'…'`, NULL as `NULL`.
pub fn display(value: &Value) -> String {
    match value {
        Value::Null => "NULL".into(),
        Value::String(s) => s.clone(),
        Value::Object(map) => match map.get("blob").and_then(Value::as_str) {
            Some(hex) if map.len() == 1 => format!("X'{hex}'"),
            _ => value.to_string(),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(real(1.5), serde_json::json!(1.5));
        assert_eq!(real(f64::INFINITY), serde_json::json!("Infinity"));
        assert_eq!(real(f64::NEG_INFINITY), serde_json::json!("-Infinity"));
        assert_eq!(
            blob(&[0x00, 0xab, 0x10]),
            serde_json::json!({"blob": "00ab10"})
        );
        assert_eq!(display(&blob(b"hi")), "X'6869'");
        assert_eq!(display(&Value::Null), "NULL");
        assert_eq!(display(&serde_json::json!("x")), "x");
        assert_eq!(display(&serde_json::json!(3)), "3");
    }
}
