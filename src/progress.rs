//! What a person sees while a run goes on, and the line it ends with.
//!
//! Bars draw on stderr only when stderr is a terminal and the run is
//! neither quiet nor verbose, so logs and bars never tear each other; the
//! one-line summary is printed in every mode but `--quiet`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How chatty a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

/// Progress bars for one run: a total and one per image.
#[derive(Clone)]
pub struct Progress {
    multi: MultiProgress,
    total: ProgressBar,
    enabled: bool,
    started: Instant,
}

impl Progress {
    pub fn new(verbosity: Verbosity, label: &str) -> Progress {
        let enabled = verbosity == Verbosity::Normal && std::io::stderr().is_terminal();
        let target = if enabled {
            ProgressDrawTarget::stderr_with_hz(8)
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(target);
        let total = multi.add(ProgressBar::new(0));
        total.set_style(bytes_style());
        total.set_prefix(label.to_string());
        Progress {
            multi,
            total,
            enabled,
            started: Instant::now(),
        }
    }

    /// A bar for one image's bytes.
    pub fn image(&self, name: &str, bytes: u64) -> ProgressBar {
        if !self.enabled {
            return ProgressBar::hidden();
        }
        let bar = self
            .multi
            .insert_before(&self.total, ProgressBar::new(bytes));
        bar.set_style(bytes_style());
        bar.set_prefix(shorten(name, 40));
        bar
    }

    /// Adds to the total the bar measures against.
    pub fn add_total(&self, bytes: u64) {
        self.total.inc_length(bytes);
    }

    /// Counts bytes moved.
    pub fn advance(&self, image: &ProgressBar, bytes: u64) {
        image.inc(bytes);
        self.total.inc(bytes);
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Prints a line above the bars (or plainly when there are none).
    pub fn println(&self, line: &str) {
        if self.enabled {
            let _ = self.multi.println(line);
        } else {
            eprintln!("{line}");
        }
    }

    pub fn finish(&self) {
        self.total.finish_and_clear();
        let _ = self.multi.clear();
    }
}

fn bytes_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:40!} {wide_bar} {decimal_bytes:>10}/{decimal_total_bytes:<10} {decimal_bytes_per_sec:>12}",
    )
    .expect("template is valid")
}

fn shorten(name: &str, width: usize) -> String {
    if name.chars().count() <= width {
        return name.to_string();
    }
    let tail: String = name
        .chars()
        .rev()
        .take(width - 1)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
}

/// `1 image`, `3 images`.
pub fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Formats a byte count in SI units, as the summary line shows it.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `12.3 MB/s` for `bytes` moved in `elapsed`.
pub fn rate(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    format!("{:.1} MB/s", bytes as f64 / secs / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_bytes_in_si_units() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(320_000_000), "320.0 MB");
        assert_eq!(rate(10_000_000, Duration::from_secs(2)), "5.0 MB/s");
    }
}
