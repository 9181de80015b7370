//! Progress of an import on stderr: a bar (rows processed of total, rate, ETA) when stderr is a
//! terminal, plain lines otherwise (a log file or a CI console gets one line per second at most).

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use super::api::Job;

/// Plain lines are written at most this often while a job runs.
const LINE_INTERVAL: Duration = Duration::from_secs(1);
const BAR_TEMPLATE: &str =
    "{prefix} [{bar:32}] {pos}/{len} rows  {rate}  ETA {eta}  {elapsed_precise} {msg}";

pub struct Progress {
    mode: Mode,
}

enum Mode {
    Bar(Option<ProgressBar>),
    Lines(Lines),
}

#[derive(Default)]
struct Lines {
    job: String,
    printed_at: Option<Instant>,
    printed_processed: Option<u64>,
    /// The first progress seen, and when: the rate is measured from there.
    origin: Option<(Instant, u64)>,
}

impl Progress {
    pub fn new(terminal: bool) -> Self {
        let mode = if terminal {
            Mode::Bar(None)
        } else {
            Mode::Lines(Lines::default())
        };
        Self { mode }
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
        match &mut self.mode {
            Mode::Bar(bar) => {
                if let Some(spinner) = bar.take() {
                    spinner.finish_and_clear();
                }
                let b =
                    ProgressBar::with_draw_target(Some(job.total), ProgressDrawTarget::stderr());
                b.set_style(bar_style());
                b.set_prefix(format!("job {}", job.id));
                b.set_position(job.processed);
                b.enable_steady_tick(Duration::from_millis(200));
                *bar = Some(b);
            }
            Mode::Lines(lines) => {
                lines.job = job.id.to_string();
                eprintln!(
                    "job {} accepted: {} rows, {}",
                    job.id, job.total, job.status
                );
                lines.origin = Some((Instant::now(), job.processed));
            }
        }
    }

    pub fn update(&mut self, job: &Job) {
        match &mut self.mode {
            Mode::Bar(Some(bar)) => {
                bar.set_length(job.total);
                bar.set_position(job.processed);
            }
            Mode::Bar(None) => {}
            Mode::Lines(lines) => lines.update(job, false),
        }
    }

    pub fn finish(&mut self, job: &Job) {
        match &mut self.mode {
            Mode::Bar(bar) => {
                if let Some(bar) = bar.take() {
                    bar.set_position(job.processed);
                    bar.finish_with_message(job.status.clone());
                }
            }
            Mode::Lines(lines) => {
                lines.update(job, true);
                eprintln!("job {}: {}", job.id, job.status);
            }
        }
    }

    /// The import stops with an error: the bar stays where it was, the error line follows it.
    pub fn abandon(&mut self) {
        if let Mode::Bar(bar) = &mut self.mode {
            if let Some(bar) = bar.take() {
                bar.abandon();
            }
        }
    }

    /// A line that is not progress, after the bar has finished.
    pub fn note(&mut self, text: &str) {
        eprintln!("{text}");
    }
}

impl Lines {
    fn update(&mut self, job: &Job, last: bool) {
        let now = Instant::now();
        let changed = self.printed_processed != Some(job.processed);
        let due = self.printed_at.is_none_or(|t| now - t >= LINE_INTERVAL);
        if !changed || !(due || last) {
            return;
        }
        let (since, from) = *self.origin.get_or_insert((now, job.processed));
        let elapsed = (now - since).as_secs_f64();
        let rate = if elapsed > 0.0 {
            job.processed.saturating_sub(from) as f64 / elapsed
        } else {
            0.0
        };
        let remaining = job.total.saturating_sub(job.processed);
        let eta = if remaining == 0 {
            "0s".to_string()
        } else if rate > 0.0 {
            format!("{:.0}s", remaining as f64 / rate)
        } else {
            "unknown".to_string()
        };
        let percent = if job.total == 0 {
            100.0
        } else {
            job.processed as f64 * 100.0 / job.total as f64
        };
        eprintln!(
            "job {}: {}/{} rows processed ({percent:.0}%), {rate:.0} rows/s, ETA {eta}",
            self.job, job.processed, job.total
        );
        self.printed_at = Some(now);
        self.printed_processed = Some(job.processed);
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(BAR_TEMPLATE)
        .expect("valid template")
        .progress_chars("=> ")
        .with_key(
            "rate",
            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0} rows/s", state.per_sec());
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
    #[test]
    fn sizes() {
        assert_eq!(super::size(12), "12 B");
        assert_eq!(super::size(1536), "1.5 KiB");
        assert_eq!(super::size(3 * 1_048_576), "3.0 MiB");
    }
}
