//! The live progress bar on stderr (hidden with `--quiet` or when stderr is not a terminal),
//! refreshed by a small task from counters the workers update.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinHandle;

/// How often the bar is refreshed.
pub const TICK: Duration = Duration::from_millis(250);

/// A bar of `len` steps, or a hidden one when `quiet` or stderr is not a terminal.
pub fn bar(len: u64, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::new(len).with_style(style)
}

/// A bar refreshed every [`TICK`] by a closure that sets its position and message.
pub struct Ticker {
    bar: ProgressBar,
    task: JoinHandle<()>,
}

impl Ticker {
    /// Starts refreshing `bar` with `tick`.
    pub fn start(bar: ProgressBar, mut tick: impl FnMut(&ProgressBar) + Send + 'static) -> Ticker {
        let shown = bar.clone();
        let task = tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            loop {
                interval.tick().await;
                tick(&shown);
            }
        });
        Ticker { bar, task }
    }

    /// Stops refreshing and removes the bar.
    pub fn finish(self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}

/// Live throughput: operations since the previous call over the time since then.
#[derive(Debug, Default)]
pub struct Rate {
    last: Option<(u64, std::time::Instant)>,
}

impl Rate {
    /// Operations per second since the previous call (0 on the first).
    pub fn per_second(&mut self, total: u64) -> f64 {
        let now = std::time::Instant::now();
        let rate = match self.last {
            Some((before, at)) if now > at => {
                total.saturating_sub(before) as f64 / (now - at).as_secs_f64()
            }
            _ => 0.0,
        };
        self.last = Some((total, now));
        rate
    }
}
