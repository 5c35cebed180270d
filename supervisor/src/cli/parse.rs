//! What one flag's value means: durations, rates, sizes, and `--chaos` specs. clap calls these as
//! it parses; the config file's values go through the same ones.

use std::time::Duration;

use crate::job::Chaos;

/// Parses a duration: `500ms`, `5s`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration like 500ms or 5s ({e})"))
}

/// Parses a rate: requests per second, or per a unit (`/s`, `/min`, `/h`).
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let bad = || format!("`{s}` is not a rate like 20, 0.5, 20/s, 600/min or 50000/h");
    let (count, per) = match s.trim().split_once('/') {
        Some((count, unit)) => {
            let per = match unit.trim() {
                "s" | "sec" | "second" => 1.0,
                "m" | "min" | "minute" => 60.0,
                "h" | "hour" => 3600.0,
                _ => return Err(bad()),
            };
            (count, per)
        }
        None => (s, 1.0),
    };
    let count: f64 = count.trim().parse().map_err(|_| bad())?;
    if !count.is_finite() || count <= 0.0 {
        return Err(format!("`{s}`: a rate must be above zero"));
    }
    Ok(count / per)
}

/// `--retry-budget`: retries as a percent of first attempts, or `None` for `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudgetPct(pub Option<u32>);

/// Parses a retry budget: `20%`, `20`, or `off`.
pub fn parse_retry_budget(s: &str) -> Result<RetryBudgetPct, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("off") {
        return Ok(RetryBudgetPct(None));
    }
    let digits = t.strip_suffix('%').unwrap_or(t).trim();
    match digits.parse::<u32>() {
        Ok(pct) if pct <= 1000 => Ok(RetryBudgetPct(Some(pct))),
        _ => Err(format!("`{s}` is not a retry budget like 20% (0% to 1000%) or off")),
    }
}

/// Parses a byte count: `1048576`, `512K`, `16M`, `1G` (powers of 1024; a trailing `iB` or `B`
/// is allowed).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("`{s}` is not a size like 65536, 512K or 16M");
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (digits, shift) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift).ok_or_else(bad)
}

/// Parses a `--chaos` spec: `crash-on=7,kill-every=4s`.
pub fn parse_chaos(spec: &str) -> Result<Chaos, String> {
    let mut chaos = Chaos::default();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').ok_or_else(|| format!("`{part}` is not KEY=VALUE"))?;
        let id = || value.parse::<u64>().map_err(|_| format!("`{value}` in `{part}` is not an id"));
        match key {
            "crash-on" => chaos.worker.crash_on.push(id()?),
            "hang-on" => chaos.worker.hang_on.push(id()?),
            "bad-frame-on" => chaos.worker.bad_frame_on.push(id()?),
            "panic-on" => chaos.panic_on.push(id()?),
            "kill-every" => {
                let d = parse_duration(value)?;
                if d < Duration::from_millis(10) {
                    return Err("kill-every must be at least 10ms".into());
                }
                chaos.kill_every = Some(d);
            }
            other => {
                return Err(format!(
                    "unknown fault `{other}` (crash-on, hang-on, bad-frame-on, kill-every, panic-on)"
                ))
            }
        }
    }
    Ok(chaos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_budgets_are_percents_or_off() {
        assert_eq!(parse_retry_budget("20%"), Ok(RetryBudgetPct(Some(20))));
        assert_eq!(parse_retry_budget(" 0 "), Ok(RetryBudgetPct(Some(0))));
        assert_eq!(parse_retry_budget("OFF"), Ok(RetryBudgetPct(None)));
        for bad in ["", "-5%", "20 %x", "1001%", "half"] {
            assert!(parse_retry_budget(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates_parse_with_their_units() {
        assert_eq!(parse_rate("1900"), Ok(1900.0));
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        assert_eq!(parse_rate("20/s"), Ok(20.0));
        assert_eq!(parse_rate("600/min"), Ok(10.0));
        assert_eq!(parse_rate(" 7200 / h "), Ok(2.0));
        for bad in ["", "fast", "10/day", "0", "-3", "inf", "NaN/s", "/s"] {
            assert!(parse_rate(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }

    #[test]
    fn chaos_specs_parse_and_print_back() {
        let c = parse_chaos("crash-on=7, hang-on=9,kill-every=500ms,bad-frame-on=3").expect("valid");
        assert_eq!(c.worker.crash_on, vec![7]);
        assert_eq!(c.worker.hang_on, vec![9]);
        assert_eq!(c.worker.bad_frame_on, vec![3]);
        assert_eq!(c.kill_every, Some(Duration::from_millis(500)));
        assert_eq!(c.to_string(), "crash-on=7,hang-on=9,bad-frame-on=3,kill-every=500ms");
        for bad in ["crash-on", "crash-on=x", "explode=1", "kill-every=1ms"] {
            assert!(parse_chaos(bad).is_err(), "{bad}");
        }
    }
}
