//! Progress of an import on stderr: a bar (rows processed of total, rate, ETA) when stderr is a
//! terminal, plain lines otherwise (a log file or a CI console gets one line per second at most).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use super::api::Job;

/// Plain lines are written at most this often while a job runs.
const LINE_INTERVAL: Duration = Duration::from_secs(1);
/// The bar takes the width the rest leaves on the terminal's line.
const BAR_TEMPLATE: &str = "[{wide_bar}] {pos}/{len} rows  {rate}  ETA {left}  {msg}";
/// A rate measured over less than this says little: none is shown yet.
const MIN_MEASURE: Duration = Duration::from_millis(500);

pub struct Progress {
    mode: Mode,
    rate: Rate,
}

enum Mode {
    /// The spinner while uploading, then the bar.
    Bar(Option<ProgressBar>),
    Lines(Lines),
}

#[derive(Default)]
struct Lines {
    job: String,
    printed_at: Option<Instant>,
    printed_processed: Option<u64>,
}

/// Rows per second since the job was first seen running under this client. A job accepted
/// earlier (a re-run's replayed answer) is measured from its first poll, not from 0.
#[derive(Clone, Default)]
struct Rate(Arc<Mutex<Option<(Instant, u64)>>>);

impl Rate {
    fn start(&self, processed: u64) {
        let mut origin = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        origin.get_or_insert((Instant::now(), processed));
    }

    fn per_second(&self, processed: u64) -> Option<f64> {
        let origin = *self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (since, from) = origin?;
        let elapsed = since.elapsed();
        let done = processed.checked_sub(from).filter(|n| *n > 0)?;
        (elapsed >= MIN_MEASURE).then(|| done as f64 / elapsed.as_secs_f64())
    }

    fn shown(&self, processed: u64) -> String {
        match self.per_second(processed) {
            Some(r) => format!("{r:.0} rows/s"),
            None => "- rows/s".into(),
        }
    }

    fn eta(&self, processed: u64, total: u64) -> String {
        let left = total.saturating_sub(processed);
        if left == 0 {
            return "0s".into();
        }
        match self.per_second(processed) {
            Some(r) => format!("{:.0}s", left as f64 / r),
            None => "-".into(),
        }
    }
}

impl Progress {
    pub fn new(terminal: bool) -> Self {
        let mode = if terminal {
            Mode::Bar(None)
        } else {
            Mode::Lines(Lines::default())
        };
        Self {
            mode,
            rate: Rate::default(),
        }
    }

    pub fn uploading(&mut self, name: &str, bytes: usize) {
        let what = format!("uploading {name} ({})", size(bytes));
        match &mut self.mode {
            Mode::Bar(bar) => {
                let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
                spinner.set_style(
                    ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                        .expect("valid template"),
                );
                spinner.set_message(what);
                spinner.enable_steady_tick(Duration::from_millis(100));
                *bar = Some(spinner);
            }
            Mode::Lines(_) => eprintln!("{what}"),
        }
    }

    pub fn accepted(&mut self, job: &Job) {
        let line = if job.replayed {
            format!(
                "job {} accepted: {} rows (the same upload was accepted before; following that job)",
                job.id, job.total
            )
        } else {
            self.rate.start(job.processed);
            format!("job {} accepted: {} rows", job.id, job.total)
        };
        match &mut self.mode {
            Mode::Bar(bar) => {
                if let Some(spinner) = bar.take() {
                    spinner.finish_and_clear();
                }
                eprintln!("{line}");
                let b =
                    ProgressBar::with_draw_target(Some(job.total), ProgressDrawTarget::stderr());
                b.set_style(bar_style(self.rate.clone()));
                b.set_position(job.processed);
                b.enable_steady_tick(Duration::from_millis(200));
                *bar = Some(b);
            }
            Mode::Lines(lines) => {
                lines.job = job.id.to_string();
                eprintln!("{line}");
            }
        }
    }

    pub fn update(&mut self, job: &Job) {
        self.rate.start(job.processed);
        match &mut self.mode {
            Mode::Bar(Some(bar)) => {
                bar.set_length(job.total);
                bar.set_position(job.processed);
            }
            Mode::Bar(None) => {}
            Mode::Lines(lines) => lines.update(job, &self.rate, false),
        }
    }

    pub fn finish(&mut self, job: &Job) {
        match &mut self.mode {
            Mode::Bar(bar) => {
                if let Some(bar) = bar.take() {
                    bar.set_length(job.total);
                    bar.set_position(job.processed);
                    bar.finish_with_message(job.status.clone());
                }
            }
            Mode::Lines(lines) => {
                lines.update(job, &self.rate, true);
                eprintln!("job {}: {}", job.id, job.status);
            }
        }
    }

    /// The import stops with an error: a bar stays where it was, a spinner goes, and the error
    /// line follows.
    pub fn abandon(&mut self) {
        if let Mode::Bar(bar) = &mut self.mode {
            if let Some(bar) = bar.take() {
                if bar.length().is_some() {
                    bar.abandon();
                } else {
                    bar.finish_and_clear();
                }
            }
        }
    }

    /// A line that is not progress: above the spinner or bar while one is drawn.
    pub fn note(&mut self, text: &str) {
        match &self.mode {
            Mode::Bar(Some(bar)) => bar.println(text),
            _ => eprintln!("{text}"),
        }
    }
}

impl Lines {
    fn update(&mut self, job: &Job, rate: &Rate, last: bool) {
        let now = Instant::now();
        let changed = self.printed_processed != Some(job.processed);
        let due = self.printed_at.is_none_or(|t| now - t >= LINE_INTERVAL);
        if !changed || !(due || last) {
            return;
        }
        let percent = if job.total == 0 {
            100.0
        } else {
            job.processed as f64 * 100.0 / job.total as f64
        };
        eprintln!(
            "job {}: {}/{} rows processed ({percent:.0}%), {}, ETA {}",
            self.job,
            job.processed,
            job.total,
            rate.shown(job.processed),
            rate.eta(job.processed, job.total)
        );
        self.printed_at = Some(now);
        self.printed_processed = Some(job.processed);
    }
}

fn bar_style(rate: Rate) -> ProgressStyle {
    let eta = rate.clone();
    ProgressStyle::with_template(BAR_TEMPLATE)
        .expect("valid template")
        .progress_chars("=> ")
        .with_key(
            "rate",
            move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&rate.shown(state.pos()));
            },
        )
        .with_key(
            "left",
            move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let total = state.len().unwrap_or(0);
                let _ = w.write_str(&eta.eta(state.pos(), total));
            },
        )
}

fn size(bytes: usize) -> String {
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.1} KiB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MiB", bytes as f64 / 1_048_576.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size(12), "12 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 * 1_048_576), "3.0 MiB");
    }

    #[test]
    fn no_rate_before_there_is_something_to_measure() {
        let rate = Rate::default();
        assert_eq!(rate.shown(10), "- rows/s");
        rate.start(100);
        // Too soon, and nothing new since the start.
        assert_eq!(rate.shown(200), "- rows/s");
        assert_eq!(rate.eta(200, 1000), "-");
        assert_eq!(rate.eta(1000, 1000), "0s");
        *rate.0.lock().unwrap() = Some((Instant::now() - Duration::from_secs(2), 100));
        assert_eq!(rate.shown(100), "- rows/s");
        assert_eq!(rate.shown(300), "100 rows/s");
        assert_eq!(rate.eta(300, 1000), "7s");
    }
}
