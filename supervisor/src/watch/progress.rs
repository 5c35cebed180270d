//! What a run says while it runs: a live bar on a terminal, a plain line every 10 s otherwise
//! (journald-friendly), nothing with `-q`. The figures come from the decision core's
//! [`Snapshot`]; the same line goes to systemd's `STATUS=` and the live status file.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::engine::Snapshot;
use crate::util::thousands;

/// How often a plain progress line is printed when stderr is not a terminal.
pub const LINE_EVERY: Duration = Duration::from_secs(10);
/// The recent rate (for the ETA) is taken over this long.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// The recent rate and the time left, from snapshots over the last [`RATE_WINDOW`] taken while
/// the fleet was not paused.
#[derive(Debug, Default)]
pub struct RecentRate {
    history: VecDeque<(Instant, u64)>,
    /// The rate last measured: what the fleet goes back to after a pause.
    last: f64,
}

impl RecentRate {
    /// Adds a snapshot taken at `now`; returns items per second lately and the time left.
    ///
    /// The time left counts a pause in force (until it ends nothing is stored), and never
    /// less than the rate in force allows: a fleet paused for 50 s, or held to 10 requests a
    /// second, is not 4 s from done because it stored quickly a moment ago.
    pub fn observe(&mut self, s: &Snapshot, now: Instant) -> (f64, Option<Duration>) {
        let paused = s.paused_ms.map(Duration::from_millis).unwrap_or_default();
        if paused.is_zero() {
            self.history.push_back((now, s.stored));
            while self.history.len() > 2 && self.history.front().is_some_and(|&(t, _)| now - t > RATE_WINDOW)
            {
                self.history.pop_front();
            }
        } else {
            // A pause measures nothing: the rate after it is measured afresh.
            self.history.clear();
        }
        let span = match (self.history.front(), self.history.back()) {
            (Some(&(t0, n0)), Some(&(t1, n1))) if t1.duration_since(t0) > Duration::from_millis(500) => {
                Some((n1 - n0) as f64 / t1.duration_since(t0).as_secs_f64())
            }
            _ => None,
        };
        let rate = match span {
            Some(r) => r,
            None if self.last > 0.0 => self.last,
            None => s.stored as f64 / s.elapsed_secs.max(1e-3),
        };
        self.last = rate;
        // Items at most as fast as requests may go.
        let pace = s.pace.rate.map_or(rate, |r| if rate > 0.0 { rate.min(r) } else { r });
        let left = s.to_fetch.map(|total| total.saturating_sub(s.stored));
        let eta = match left {
            Some(0) => Some(Duration::ZERO),
            Some(left) if pace > 0.0 => Some(paused + Duration::from_secs_f64(left as f64 / pace)),
            _ => None,
        };
        (rate, eta)
    }
}

/// The figures as one line: `12,345 of 1,000,000 (1.2%), 40,100/s, ETA 24s, ...`.
pub fn line(s: &Snapshot, rate: f64, eta: Option<Duration>) -> String {
    let mut out = match s.to_fetch {
        Some(total) => {
            let pct = if total == 0 { 100.0 } else { 100.0 * s.stored as f64 / total as f64 };
            format!("{} of {} ({pct:.1}%)", thousands(s.stored), thousands(total))
        }
        None => format!("{} of ? (counting)", thousands(s.stored)),
    };
    out.push_str(&format!(", {}/s", thousands(rate.round() as u64)));
    if let Some(eta) = eta {
        out.push_str(&format!(", ETA {}", humantime::format_duration(Duration::from_secs(eta.as_secs()))));
    }
    out.push_str(&format!(
        ", {} retries, {} failed, {} restarts, {}/{} workers",
        thousands(s.tally.retries),
        thousands(s.tally.failed),
        thousands(s.tally.restarts),
        s.workers_up,
        s.workers
    ));
    match s.pace.rate {
        Some(rate) => out.push_str(&format!(", rate {rate:.1}/s")),
        None => out.push_str(&format!(", limit {}", s.pace.concurrency)),
    }
    if s.pace.too_many > 0 {
        let share = 100.0 * s.pace.too_many as f64 / s.pace.requests.max(1) as f64;
        out.push_str(&format!(", {share:.2}% 429s"));
    }
    match (&s.held_back, s.paused_ms) {
        (Some(why), Some(ms)) if !s.circuit_open => {
            let until = std::time::SystemTime::now() + Duration::from_millis(ms);
            let clock = humantime::format_rfc3339_seconds(until).to_string();
            let clock = clock.get(11..19).unwrap_or(&clock);
            out.push_str(&format!(", {why} until {clock} UTC ({:.1}s more)", ms as f64 / 1000.0));
        }
        (Some(why), _) => out.push_str(&format!(", {why}")),
        (None, Some(ms)) => out.push_str(&format!(", paused {:.1}s more", ms as f64 / 1000.0)),
        (None, None) => {}
    }
    out
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A live bar on stderr (a terminal).
    Bar,
    /// A plain log line every [`LINE_EVERY`].
    Lines,
    /// Nothing (`-q`).
    Quiet,
}

/// The one place bars are drawn, shared with the logger so that log lines print above the bar.
pub fn multi() -> &'static MultiProgress {
    static MULTI: std::sync::OnceLock<MultiProgress> = std::sync::OnceLock::new();
    MULTI.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)))
}

/// Shows a run's progress in its [`Mode`].
pub struct Progress {
    mode: Mode,
    bar: Option<ProgressBar>,
    rate: RecentRate,
    last_line: Option<Instant>,
}

impl Progress {
    /// Starts showing progress.
    pub fn new(mode: Mode) -> Progress {
        let bar = (mode == Mode::Bar).then(|| {
            let bar = multi().add(ProgressBar::no_length());
            let style = ProgressStyle::with_template("{spinner} {elapsed_precise} [{bar:30}] {msg}")
                .expect("a valid template")
                .progress_chars("=> ");
            bar.set_style(style);
            bar
        });
        Progress { mode, bar, rate: RecentRate::default(), last_line: None }
    }

    /// Shows `s`, taken at `now`. Returns the line, for those who repeat it.
    pub fn update(&mut self, s: &Snapshot, now: Instant) -> String {
        let (rate, eta) = self.rate.observe(s, now);
        let text = line(s, rate, eta);
        match self.mode {
            Mode::Bar => {
                if let Some(bar) = &self.bar {
                    if let Some(total) = s.to_fetch {
                        bar.set_length(total.max(1));
                    }
                    bar.set_position(s.stored);
                    bar.set_message(text.clone());
                }
            }
            Mode::Lines => {
                if self.last_line.is_none_or(|at| now.duration_since(at) >= LINE_EVERY) {
                    if self.last_line.is_some() {
                        log::info!("progress: {text}");
                    }
                    self.last_line = Some(now);
                }
            }
            Mode::Quiet => {}
        }
        text
    }

    /// Removes the bar, if there is one.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            multi().remove(&bar);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Pacing;

    #[test]
    fn the_line_has_every_figure_and_the_eta_follows_the_recent_rate() {
        let mut pace = RecentRate::default();
        let t0 = Instant::now();
        let mut s = Snapshot {
            to_fetch: Some(10_000),
            workers: 4,
            workers_up: 4,
            pace: Pacing { concurrency: 64, ..Pacing::default() },
            ..Snapshot::default()
        };
        pace.observe(&s, t0);
        s.stored = 1000;
        s.elapsed_secs = 2.0;
        let (rate, eta) = pace.observe(&s, t0 + Duration::from_secs(2));
        assert_eq!((rate, eta), (500.0, Some(Duration::from_secs(18))));
        s.tally.retries = 7;
        s.pace.too_many = 3;
        s.pace.requests = 1200;
        s.paused_ms = Some(1500);
        let text = line(&s, rate, eta);
        assert_eq!(
            text,
            "1,000 of 10,000 (10.0%), 500/s, ETA 18s, 7 retries, 0 failed, 0 restarts, 4/4 workers, limit 64, 0.25% 429s, paused 1.5s more"
        );
        // Paused for 50 s: the time left counts the pause, at the rate before it.
        s.paused_ms = Some(50_000);
        let (rate, eta) = pace.observe(&s, t0 + Duration::from_secs(3));
        assert_eq!((rate, eta), (500.0, Some(Duration::from_secs(68))));
        s.paused_ms = None;
        s.stored = 1500;
        let (_, eta) = pace.observe(&s, t0 + Duration::from_secs(53));
        assert_eq!(eta, Some(Duration::from_secs(17)), "after it, the rate before it until measured anew");
        // Under a rate of 10 a second, at most 10 items a second.
        s.pace.rate = Some(10.0);
        let (_, eta) = pace.observe(&s, t0 + Duration::from_secs(54));
        assert_eq!(eta, Some(Duration::from_secs(850)));
        s.pace.rate = None;
        s.stored = 1000;
        s.paused_ms = Some(1500);
        s.to_fetch = None;
        s.pace.rate = Some(1900.0);
        assert!(line(&s, rate, None).starts_with("1,000 of ? (counting), 500/s, 7 retries"));
        assert!(line(&s, rate, None).contains("rate 1900.0/s"));
        // What holds the fleet back, and until when on the clock.
        s.held_back = Some("paused: the server announced its limit used up".into());
        let paused = line(&s, rate, None);
        let (_, tail) =
            paused.split_once(", paused: the server announced its limit used up until ").expect(&paused);
        let (clock, rest) = tail.split_at(8);
        assert!(clock.chars().all(|c| c.is_ascii_digit() || c == ':') && clock.len() == 8, "{paused}");
        assert_eq!(rest, " UTC (1.5s more)");
        s.paused_ms = None;
        s.circuit_open = true;
        s.held_back =
            Some("circuit open: 100% of requests failed (HTTP 503) for 20s, probing every 1s".into());
        assert!(line(&s, rate, None)
            .ends_with(", circuit open: 100% of requests failed (HTTP 503) for 20s, probing every 1s"));
    }
}
