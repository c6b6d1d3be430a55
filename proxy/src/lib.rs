//! Placeholder for the proxy component; it is built in its own issue (see `issues`), and the
//! `dirkdb proxy` subcommand says so instead of pretending to work.
