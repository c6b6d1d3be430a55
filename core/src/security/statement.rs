//! The two statements of authentication, recognized on a statement's raw text:
//!
//! * `AUTH <user> <password>` — a client proves who it is. The password is the rest of the
//!   statement, trimmed; written between single quotes (`'it''s;ok'`) it may hold anything.
//! * `DIRK AS <user>` — the cluster user (a proxy, a cache) says which client the following
//!   statements run for, so the server enforces that client's grants.

/// A recognized authentication statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStatement {
    /// `AUTH <user> <password>`.
    Auth {
        /// The user's name.
        user: String,
        /// The password as given.
        password: String,
    },
    /// `DIRK AS <user>`.
    ActAs(String),
}

/// `Some` when `sql` is an authentication statement; `Err` names what is malformed.
pub fn parse(sql: &str) -> Option<Result<AuthStatement, String>> {
    let text = sql.trim();
    let (first, rest) = split_word(text);
    if first.eq_ignore_ascii_case("AUTH") {
        return Some(parse_auth(rest));
    }
    if first.eq_ignore_ascii_case("DIRK") {
        let (second, rest) = split_word(rest);
        if second.eq_ignore_ascii_case("AS") {
            let user = rest.trim();
            if user.is_empty() || user.contains(char::is_whitespace) {
                return Some(Err("usage: DIRK AS <user>".into()));
            }
            return Some(Ok(AuthStatement::ActAs(user.to_string())));
        }
    }
    None
}

fn parse_auth(rest: &str) -> Result<AuthStatement, String> {
    const USAGE: &str = "usage: AUTH <user> <password>";
    let (user, password) = split_word(rest);
    let password = password.trim();
    if user.is_empty() || password.is_empty() {
        return Err(USAGE.into());
    }
    let password = match password.strip_prefix('\'') {
        Some(quoted) => unquote(quoted).ok_or(USAGE)?,
        None => password.to_string(),
    };
    Ok(AuthStatement::Auth {
        user: user.to_string(),
        password,
    })
}

/// The text after an opening `'`: up to the closing one, `''` standing for `'`.
fn unquote(quoted: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = quoted.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            if chars.peek() == Some(&'\'') {
                chars.next();
                out.push('\'');
            } else {
                return chars.all(char::is_whitespace).then_some(out);
            }
        } else {
            out.push(c);
        }
    }
    None
}

fn split_word(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    match text.find(char::is_whitespace) {
        Some(i) => (&text[..i], &text[i..]),
        None => (text, ""),
    }
}

/// The `AUTH` statement (without its `;`) for `user` and `password`, quoted so any password
/// survives the statement splitter.
pub fn auth_statement(user: &str, password: &str) -> String {
    format!("AUTH {user} '{}'", password.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(user: &str, password: &str) -> Option<Result<AuthStatement, String>> {
        Some(Ok(AuthStatement::Auth {
            user: user.into(),
            password: password.into(),
        }))
    }

    #[test]
    fn auth_forms() {
        assert_eq!(parse("AUTH app secret"), auth("app", "secret"));
        assert_eq!(parse("  auth\tapp   secret  "), auth("app", "secret"));
        assert_eq!(parse("AUTH app 'it''s; ok'"), auth("app", "it's; ok"));
        assert_eq!(parse(&auth_statement("a", "x' y''z")), auth("a", "x' y''z"));
        assert!(matches!(parse("AUTH app"), Some(Err(_))));
        assert!(matches!(parse("AUTH app 'open"), Some(Err(_))));
        assert_eq!(parse("SELECT 1"), None);
        assert_eq!(parse("AUTHOR x y"), None);
    }

    #[test]
    fn act_as_forms() {
        assert_eq!(
            parse("DIRK AS app"),
            Some(Ok(AuthStatement::ActAs("app".into())))
        );
        assert!(matches!(parse("dirk as"), Some(Err(_))));
        assert_eq!(parse("DIRK POSITION"), None);
    }
}
