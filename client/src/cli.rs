//! `dirkdb client`: the interactive line-oriented client, and its script modes.
//!
//! Modes, in order of precedence: `-c "SQL"` runs the given statements; `-f FILE` runs a script;
//! with standard input not a terminal, the statements piped in are run; otherwise the REPL starts
//! (line editing and persistent history through `rustyline`, statements spanning lines until their
//! `;`, a prompt showing the current database). Scripts stop at the first error with exit code 1
//! unless `--continue-on-error` is given; a server that cannot be reached (at start or later)
//! exits with 2. The connection is made first: the REPL's banner is printed only once it is up,
//! and a script (even an empty one) fails with 2 when nothing listens.
//!
//! The client follows the transactions it opens: when the connection is lost inside one, it
//! says the transaction was rolled back (the server rolls back a closed connection's
//! transaction). Ctrl-C on a continuation line discards the typed statement and says so.
//!
//! With `--upstream host:port,host:port` (several proxies), it connects to the first that
//! answers, and after a lost connection the next statement goes to the next one (a script still
//! stops with 2 at the lost statement: its outcome is unknown).

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use dirkdb_core::sql::split_script;
use rustyline::error::ReadlineError;
use rustyline::DefaultEditor;

use dirkdb_core::security::statement::{parse as parse_auth, AuthStatement};
use dirkdb_core::security::Credentials;
use dirkdb_core::sql::classify::{classify, StatementClass};
use dirkdb_core::sql::transaction::TransactionState;

use crate::credentials::CredentialArgs;
use crate::render::{elapsed_text, render_rows_with_null, OutputFormat, DEFAULT_NULL_TEXT};
use crate::{Client, ClientError, Reply};

/// Exit code after an SQL error in a script.
pub const EXIT_SQL_ERROR: i32 = 1;
/// Exit code when the server cannot be reached.
pub const EXIT_CONNECTION: i32 = 2;

/// Command-line options of `dirkdb client`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Server, proxy or cache host.
    #[arg(default_value = "127.0.0.1")]
    pub host: String,
    /// Its SQL port (3949 is the proxy, 3948 the first server, 3951 the cache).
    #[arg(default_value_t = 3949)]
    pub port: u16,
    /// Run these statements and exit.
    #[arg(short = 'c', long = "command", value_name = "SQL")]
    pub command: Option<String>,
    /// Run the statements of this file and exit.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        conflicts_with = "command"
    )]
    pub file: Option<PathBuf>,
    /// How results are printed.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
    /// In -c, -f and piped scripts, go on after a failed statement (exit code is still 1).
    #[arg(long)]
    pub continue_on_error: bool,
    /// How tables show NULL (CSV: an empty field; JSON: null).
    #[arg(long, value_name = "TEXT", default_value = DEFAULT_NULL_TEXT)]
    pub null: String,
    /// Who to authenticate as.
    #[command(flatten)]
    pub credentials: CredentialArgs,
    /// TLS (`--tls`, `--ca FILE`).
    #[command(flatten)]
    pub tls: crate::tls_args::TlsArgs,
    /// Several proxies (or caches) to use in turn, `host:port,host:port`: the client connects
    /// to the first that answers and moves to the next when its connection fails. Replaces
    /// HOST and PORT.
    #[arg(long, value_name = "HOST:PORT,…", value_delimiter = ',')]
    pub upstream: Vec<String>,
}

impl ClientArgs {
    /// The addresses to try, in order: `--upstream`'s, else HOST:PORT.
    pub fn addresses(&self) -> Vec<String> {
        let listed: Vec<String> = self
            .upstream
            .iter()
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        if listed.is_empty() {
            vec![format!("{}:{}", self.host, self.port)]
        } else {
            listed
        }
    }
}

/// Runs the client; returns the process exit code.
pub fn run(args: ClientArgs) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the client runtime: {e}");
            return EXIT_CONNECTION;
        }
    };
    let credentials = match args.credentials.resolve() {
        Ok(credentials) => credentials,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_CONNECTION;
        }
    };
    if let Err(e) = args.tls.apply() {
        eprintln!("{e}");
        return EXIT_CONNECTION;
    }
    let mut shell = Shell {
        runtime,
        addrs: args.addresses(),
        current: 0,
        credentials,
        client: None,
        database: None,
        format: args.format,
        null_text: args.null.clone(),
        interactive: false,
        txn: TransactionState::default(),
    };
    let script = match (&args.command, &args.file) {
        (Some(sql), _) => Some(sql.clone()),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(e) => {
                eprintln!("cannot read {}: {e}", path.display());
                return EXIT_SQL_ERROR;
            }
        },
        (None, None) if !std::io::stdin().is_terminal() => {
            let mut text = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut text) {
                eprintln!("cannot read standard input: {e}");
                return EXIT_SQL_ERROR;
            }
            Some(text)
        }
        (None, None) => None,
    };
    match script {
        Some(text) => shell.run_script(&text, args.continue_on_error),
        None => shell.repl(),
    }
}

struct Shell {
    runtime: tokio::runtime::Runtime,
    /// Where to connect, in order of preference (`--upstream`), and the one in use.
    addrs: Vec<String>,
    current: usize,
    /// Presented with `AUTH` on every (re)connection.
    credentials: Option<Credentials>,
    client: Option<Client>,
    database: Option<String>,
    format: OutputFormat,
    null_text: String,
    interactive: bool,
    /// The transaction this client opened, followed from its successful statements.
    txn: TransactionState,
}

enum Outcome {
    Ok,
    SqlError,
    ConnectionLost,
}

impl Shell {
    fn run_script(&mut self, text: &str, continue_on_error: bool) -> i32 {
        if self.connect().is_err() {
            return EXIT_CONNECTION;
        }
        let script = split_script(text);
        let mut statements = script.statements;
        if !script.remainder.is_empty() {
            statements.push(script.remainder);
        }
        let mut code = 0;
        for statement in statements {
            match self.execute(&statement) {
                Outcome::Ok => {}
                Outcome::ConnectionLost => return EXIT_CONNECTION,
                Outcome::SqlError if continue_on_error => code = EXIT_SQL_ERROR,
                Outcome::SqlError => return EXIT_SQL_ERROR,
            }
        }
        code
    }

    fn repl(&mut self) -> i32 {
        self.interactive = true;
        let mut editor = match DefaultEditor::new() {
            Ok(e) => e,
            Err(e) => {
                eprintln!("cannot start line editing: {e}");
                return EXIT_CONNECTION;
            }
        };
        let history = history_path();
        if let Some(path) = &history {
            let _ = editor.load_history(path);
        }
        if self.connect().is_err() {
            return EXIT_CONNECTION;
        }
        println!(
            "DirkDB client — connected to {} (end statements with ;, quit with miala)",
            self.addr()
        );
        let mut buffer = String::new();
        loop {
            let prompt = self.prompt(buffer.is_empty());
            let line = match editor.readline(&prompt) {
                Ok(line) => line,
                Err(ReadlineError::Interrupted) => {
                    if !buffer.trim().is_empty() {
                        let lines = buffer.lines().count();
                        let noun = if lines == 1 { "line" } else { "lines" };
                        eprintln!("(statement discarded: {lines} {noun} not sent)");
                    }
                    buffer.clear();
                    continue;
                }
                Err(ReadlineError::Eof) => break,
                Err(e) => {
                    eprintln!("input error: {e}");
                    break;
                }
            };
            if buffer.is_empty() {
                match line
                    .trim()
                    .trim_end_matches(';')
                    .to_ascii_lowercase()
                    .as_str()
                {
                    "miala" | "mivaoka" | "quit" | "exit" | "\\q" => break,
                    "diovy" | "clear" => {
                        let _ = editor.clear_screen();
                        continue;
                    }
                    "" => continue,
                    _ => {}
                }
            }
            buffer.push_str(&line);
            buffer.push('\n');
            let script = split_script(&buffer);
            if script.statements.is_empty() {
                continue;
            }
            if !mentions_a_password(&script.statements) {
                let _ = editor.add_history_entry(buffer.trim_end());
            }
            for statement in &script.statements {
                self.execute(statement);
            }
            buffer = script.remainder;
            if !buffer.is_empty() {
                buffer.push('\n');
            }
        }
        if let Some(path) = &history {
            let _ = editor.save_history(path);
        }
        0
    }

    fn prompt(&self, fresh: bool) -> String {
        let name = self.database.as_deref().unwrap_or("DirkDB");
        if fresh {
            format!("|{name}> ")
        } else {
            format!("{}> ", " ".repeat(name.chars().count() + 1))
        }
    }

    fn connect(&mut self) -> Result<(), ()> {
        if self.client.is_some() {
            return Ok(());
        }
        let result = self.connect_first();
        match result {
            Ok(client) => {
                self.client = Some(client);
                if let Some(db) = self.database.clone() {
                    // Back after a lost connection: restore the session's database.
                    let _ = self.run_on_client(&format!("USE {db}"));
                }
                Ok(())
            }
            Err(e) => {
                eprintln!("{e}");
                Err(())
            }
        }
    }

    /// Connects to the first address that answers, starting with the one in use; says so when
    /// it had to move on.
    fn connect_first(&mut self) -> Result<Client, ClientError> {
        let mut last = None;
        for step in 0..self.addrs.len() {
            let i = (self.current + step) % self.addrs.len();
            let connecting = Client::connect_as(&self.addrs[i], self.credentials.as_ref());
            match self.runtime.block_on(connecting) {
                Ok(client) => {
                    if step > 0 {
                        eprintln!("(now connected to {})", self.addrs[i]);
                    }
                    self.current = i;
                    return Ok(client);
                }
                Err(e) => {
                    if self.addrs.len() > 1 {
                        eprintln!("{e}; trying the next upstream");
                    }
                    last = Some(e);
                }
            }
        }
        // `addrs` is never empty (HOST:PORT when no --upstream), so `last` is set.
        Err(last.unwrap_or(ClientError::Closed))
    }

    /// The address in use.
    fn addr(&self) -> &str {
        &self.addrs[self.current % self.addrs.len()]
    }

    fn run_on_client(&mut self, statement: &str) -> Option<Result<Reply, ClientError>> {
        let client = self.client.as_mut()?;
        Some(self.runtime.block_on(client.execute(statement)))
    }

    fn execute(&mut self, statement: &str) -> Outcome {
        if self.connect().is_err() {
            return Outcome::ConnectionLost;
        }
        let started = Instant::now();
        let Some(result) = self.run_on_client(statement) else {
            return Outcome::ConnectionLost;
        };
        let elapsed = started.elapsed();
        match result {
            Ok(Reply::Rows(rs)) => {
                print_out(&render_rows_with_null(
                    &rs,
                    self.format,
                    elapsed,
                    &self.null_text,
                ));
                Outcome::Ok
            }
            Ok(Reply::Message(text)) => {
                self.track_database(&text);
                if let StatementClass::Transaction(control) = classify(statement) {
                    self.txn.follow(&control);
                }
                self.print_message(&text, elapsed);
                Outcome::Ok
            }
            Err(e) if e.is_fatal() => {
                eprintln!("{e}");
                self.client = None;
                // The next connection starts with the next upstream.
                self.current = (self.current + 1) % self.addrs.len();
                if std::mem::take(&mut self.txn).open {
                    eprintln!(
                        "the open transaction was rolled back: the connection was lost before it ended"
                    );
                }
                if self.interactive {
                    eprintln!("(the connection will be reopened for the next statement)");
                }
                Outcome::ConnectionLost
            }
            Err(e) => {
                eprintln!("{e}");
                Outcome::SqlError
            }
        }
    }

    fn print_message(&self, text: &str, elapsed: std::time::Duration) {
        match self.format {
            OutputFormat::Table => print_out(&format!("{text} ({})\n", elapsed_text(elapsed))),
            OutputFormat::Csv | OutputFormat::Json => eprintln!("{text}"),
        }
    }

    /// Follows USE and DROP DATABASE so the prompt shows the current database.
    fn track_database(&mut self, text: &str) {
        if let Some(name) = text
            .strip_prefix("Ny tahiry : ")
            .and_then(|rest| rest.strip_suffix(" dia miasa ankehitriny"))
        {
            self.database = Some(name.to_string());
        }
        if let Some(name) = text
            .strip_prefix("Ny tahiry : ")
            .and_then(|rest| rest.strip_suffix(" dia voafafa soamantsara"))
        {
            if self.database.as_deref() == Some(name) {
                self.database = None;
            }
        }
    }
}

fn print_out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// An `AUTH` typed at the prompt stays out of the history file.
fn mentions_a_password(statements: &[String]) -> bool {
    statements
        .iter()
        .any(|s| matches!(parse_auth(s), Some(Ok(AuthStatement::Auth { .. }))))
}

fn history_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("DIRKDB_HISTORY") {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".dirkdb_history"))
}
