//! Progress on stderr for work that can take more than a few seconds
//! (indicatif): a spinner with the elapsed time for one long step, a bar
//! with an estimate of the time left for counted steps. Drawn only when
//! stderr is a terminal; otherwise nothing is printed, so logs and tests
//! see only the tool's own lines.

use std::borrow::Cow;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, WeakProgressBar};

/// Bars drawn now, cleared by [`clear`] before an error or on Ctrl-C.
static ACTIVE: Mutex<Vec<WeakProgressBar>> = Mutex::new(Vec::new());

/// A progress indicator, cleared from the terminal when dropped.
pub struct Progress(ProgressBar);

fn target() -> ProgressDrawTarget {
    if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

fn register(pb: ProgressBar) -> Progress {
    if let Ok(mut a) = ACTIVE.lock() {
        a.retain(|w| w.upgrade().is_some());
        a.push(pb.downgrade());
    }
    Progress(pb)
}

/// A spinner for one step of unknown length: `msg` and the time elapsed.
pub fn spinner(msg: impl Into<Cow<'static, str>>) -> Progress {
    let pb = ProgressBar::with_draw_target(None, target());
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_message(msg);
    pb.enable_steady_tick(Duration::from_millis(120));
    register(pb)
}

/// A bar of `len` steps: `msg`, steps done, time elapsed and left.
pub fn bar(len: u64, msg: impl Into<Cow<'static, str>>) -> Progress {
    let pb = ProgressBar::with_draw_target(Some(len), target());
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} ({elapsed} elapsed, about {eta} left)",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(msg);
    pb.enable_steady_tick(Duration::from_millis(250));
    register(pb)
}

impl Progress {
    /// One more step done.
    pub fn inc(&self) {
        self.0.inc(1);
    }

    /// `n` more steps done.
    pub fn inc_by(&self, n: u64) {
        self.0.inc(n);
    }

    /// Changes the message.
    pub fn set_message(&self, msg: impl Into<Cow<'static, str>>) {
        self.0.set_message(msg);
    }

    /// Runs `f` (e.g. a status line on stderr) with the bar out of the way.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.0.suspend(f)
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// Clears every progress indicator drawn now (before an error message, or
/// on Ctrl-C).
pub fn clear() {
    if let Ok(a) = ACTIVE.lock() {
        for pb in a.iter().filter_map(WeakProgressBar::upgrade) {
            pb.finish_and_clear();
        }
    }
}
