//! Placeholder for the cache component; it is built in its own issue (see `issues`), and the
//! `dirkdb cache` subcommand says so instead of pretending to work.
