//! The pacer's arithmetic, on a simulated clock.

use std::collections::VecDeque;

use super::*;

fn settings(rate: Option<f64>, burst: Option<u32>, concurrency: Option<u32>) -> PaceSettings {
    PaceSettings {
        rate,
        burst,
        concurrency,
        ceiling: 1024,
        outage_max: Duration::from_secs(300),
        wait_for_api: Duration::from_secs(180),
        api: "127.0.0.1:9".into(),
    }
}

/// A fleet of simulated workers around a pacer: each spends every permit it holds at once
/// (the most eager a worker can be), and reports spending as a real one does.
struct Fleet {
    pacer: Pacer,
    now: Instant,
    /// Permits in each worker's hand.
    hand: Vec<u32>,
    /// When each permit was spent.
    spends: Vec<Instant>,
    paused: Vec<(usize, u64)>,
    paces: Vec<(usize, Pace)>,
}

impl Fleet {
    fn new(settings: PaceSettings, workers: usize) -> Fleet {
        let now = Instant::now();
        let mut f = Fleet {
            pacer: Pacer::new(settings, workers, now),
            now,
            hand: vec![0; workers],
            spends: Vec::new(),
            paused: Vec::new(),
            paces: Vec::new(),
        };
        for slot in 0..workers {
            let mut out = Vec::new();
            f.pacer.join(slot, 1, now, &mut out);
            f.pacer.busy(slot, 1, true, now, &mut out);
            f.apply(out);
        }
        f
    }

    fn apply(&mut self, out: Vec<Command>) {
        for c in out {
            match c {
                Command::Permits { slot, n, .. } => self.hand[slot] += n,
                Command::Pause { slot, ms, .. } => {
                    self.hand[slot] = 0;
                    self.paused.push((slot, ms));
                }
                Command::Pace { slot, pace, .. } => self.paces.push((slot, pace)),
                _ => {}
            }
        }
    }

    /// Every worker in `spending` spends what it holds now and reports it; then the clock moves
    /// on by `dt` and the pacer wakes if it asked to.
    fn step(&mut self, dt: Duration, spending: &[bool]) {
        for (slot, _) in spending.iter().enumerate().filter(|(_, s)| **s) {
            let n = std::mem::take(&mut self.hand[slot]);
            self.spends.extend(std::iter::repeat_n(self.now, n as usize));
            if n > 0 {
                let mut out = Vec::new();
                self.pacer.spent(slot, 1, n, self.now, &mut out);
                self.apply(out);
            }
        }
        self.now += dt;
        let mut out = Vec::new();
        self.pacer.wake(self.now, &mut out);
        self.apply(out);
    }

    /// The most spends in any window of `span`.
    fn busiest(&self, span: Duration) -> usize {
        let mut window = VecDeque::new();
        let mut most = 0;
        for &t in &self.spends {
            window.push_back(t);
            while window.front().is_some_and(|&f| t.duration_since(f) >= span) {
                window.pop_front();
            }
            most = most.max(window.len());
        }
        most
    }
}

#[test]
fn the_fleet_never_sends_more_than_burst_plus_rate_in_any_window() {
    let mut rng = fastrand::Rng::with_seed(3);
    for (rate, burst, workers) in [(100.0, Some(5), 3), (1900.0, None, 4), (10.0, Some(1), 8), (0.5, None, 2)]
    {
        let mut f = Fleet::new(settings(Some(rate), burst, None), workers);
        let horizon = Duration::from_secs_f64((2000.0 / rate).clamp(5.0, 60.0));
        let end = f.now + horizon;
        // For a while, workers sit on their permits and spend them at random moments, all at
        // once: the worst a burst can be. Then they spend at once, to check the rate is reached.
        let hoard_until = f.now + horizon / 2;
        let mut start = (f.now, 0);
        while f.now < end {
            let spending: Vec<bool> =
                (0..workers).map(|_| f.now >= hoard_until || rng.u8(..10) == 0).collect();
            if f.now < hoard_until {
                start = (f.now, f.spends.len());
            }
            f.step(Duration::from_micros(rng.u64(0..5_000)), &spending);
        }
        let burst = burst_of(rate, burst);
        for span in [Duration::from_millis(100), Duration::from_secs(1), Duration::from_secs(3)] {
            let bound = burst + rate * span.as_secs_f64();
            let most = f.busiest(span) as f64;
            assert!(most <= bound.ceil(), "rate {rate}: {most} spends in {span:?}, bound {bound}");
        }
        // And it is not starved: the rate is reached, less what accrues while a permit sits
        // in a worker's hand (room in the bucket is taken by held permits).
        let sent = (f.spends.len() - start.1) as f64;
        let ideal = rate * end.duration_since(start.0).as_secs_f64();
        assert!(sent >= 0.95 * ideal, "rate {rate}: {sent} sent of {ideal} allowed");
    }
}

#[test]
fn a_dead_workers_permits_come_back_at_the_rate() {
    let mut f = Fleet::new(settings(Some(100.0), Some(20), None), 2);
    let alive = [true, false]; // worker 1 holds its grant and never spends it
    f.step(Duration::from_millis(300), &alive);
    assert!(f.hand[1] > 0, "worker 1 was granted permits");
    let before = f.spends.len();
    let mut out = Vec::new();
    f.pacer.leave(1, &mut out);
    f.apply(out);
    for _ in 0..100 {
        f.step(Duration::from_millis(10), &alive);
    }
    // One second later, worker 0 has had the whole rate: what worker 1 held was not lost.
    let sent = f.spends.len() - before;
    assert!((95..=125).contains(&sent), "{sent} sent in 1s at 100/s after the death");
    // And the whole burst is the survivor's to hold: it is not still counted in the dead
    // worker's hand.
    for _ in 0..50 {
        f.step(Duration::from_millis(10), &[false, false]);
    }
    assert_eq!(f.hand[0], 20);
}

#[test]
fn a_fleet_wide_wait_pauses_every_worker_and_sending_resumes_at_the_rate() {
    let mut f = Fleet::new(settings(Some(1000.0), Some(100), None), 3);
    let alive = [true; 3];
    for _ in 0..20 {
        f.step(Duration::from_millis(10), &alive);
    }
    // A quarter of 40 answers refused: the client as a whole is limited.
    let t = Traffic {
        requests: 40,
        too_many: 10,
        throttled: 10,
        wait_ms: Some(1000),
        statuses: vec![(200, 30), (429, 10)],
        ..Traffic::default()
    };
    let mut out = Vec::new();
    f.pacer.traffic(&t, f.now, &mut out);
    f.apply(out);
    let mut paused: Vec<usize> = f
        .paused
        .iter()
        .map(|&(s, ms)| {
            assert_eq!(ms, 1000);
            s
        })
        .collect();
    paused.sort_unstable();
    assert_eq!(paused, [0, 1, 2], "every worker is paused");
    assert_eq!(f.pacer.next_wake(f.now), Some(f.now + Duration::from_secs(1)));
    // A second report of the same wait is the same pause.
    let mut out = Vec::new();
    f.pacer.traffic(&t, f.now, &mut out);
    assert!(out.iter().all(|c| !matches!(c, Command::Pause { .. })));
    let pause_start = f.now;
    let before = f.spends.len();
    while f.now < pause_start + Duration::from_millis(1100) {
        f.step(Duration::from_millis(5), &alive);
    }
    let during: Vec<_> =
        f.spends[before..].iter().filter(|&&t| t < pause_start + Duration::from_secs(1)).collect();
    assert!(during.is_empty(), "{} permits spent during the pause", during.len());
    // 100ms after the pause, about 100 at 1000/s: the bucket restarted empty, no burst of 100.
    let after = f.spends.len() - before;
    assert!(after <= 110, "{after} sent in the first 100ms after the pause");
    assert_eq!(f.pacer.figures().pauses, 1);
    assert_eq!(f.pacer.figures().rate, Some(1000.0), "--rate stands: it does not back off");
}

#[test]
fn a_sporadic_refusal_pauses_nobody() {
    let mut f = Fleet::new(settings(None, None, None), 3);
    let mut out = Vec::new();
    let clean = Traffic { requests: 99, statuses: vec![(200, 99)], ..Traffic::default() };
    f.pacer.traffic(&clean, f.now, &mut out);
    let one = Traffic {
        requests: 1,
        too_many: 1,
        throttled: 1,
        wait_ms: Some(1000),
        statuses: vec![(429, 1)],
        ..Traffic::default()
    };
    f.pacer.traffic(&one, f.now, &mut out);
    f.apply(out);
    assert!(f.paused.is_empty(), "one refusal in a hundred pauses no worker: {:?}", f.paused);
    assert_eq!(f.pacer.figures().pauses, 0);
    // A long wait is the whole client's, however rare.
    let long = Traffic { wait_ms: Some(throttle::LONG_WAIT.as_millis() as u64), ..one };
    let mut out = Vec::new();
    f.pacer.traffic(&long, f.now, &mut out);
    f.apply(out);
    assert_eq!(f.paused.len(), 3, "{:?}", f.paused);
}

/// A pacer with no rate and two workers joined (not busy), the clock it started at, and what
/// it said.
fn unmetered_pair() -> (Pacer, Instant, Vec<Command>) {
    let now = Instant::now();
    let mut p = Pacer::new(settings(None, None, None), 2, now);
    let mut out = Vec::new();
    for slot in 0..2 {
        p.join(slot, 1, now, &mut out);
    }
    (p, now, out)
}

#[test]
fn refusals_meter_the_fleet_below_its_send_rate_and_it_climbs_back_then_runs_free() {
    let (mut p, mut now, mut out) = unmetered_pair();
    // 200 answers every 100ms: 2000 a second, the refused report's among them.
    for _ in 0..10 {
        now += INTERVAL;
        p.traffic(&clean(1, 200), now, &mut out);
    }
    assert_eq!(p.figures().rate, None, "unmetered while nothing is refused");
    // One refusal in a hundred is sporadic: nothing changes.
    now += INTERVAL;
    p.traffic(&Traffic { throttled: 2, too_many: 2, ..clean(1, 200) }, now, &mut out);
    assert_eq!(p.figures().rate, None);
    // A whole report refused: 200 of 2,400 answers over the last 1.2 s, past 2% (short of the
    // 10% that would be the whole client's).
    now += INTERVAL;
    p.traffic(&Traffic { throttled: 200, too_many: 200, ..clean(1, 200) }, now, &mut out);
    let f = p.figures();
    assert_eq!(f.rate_source, Some(RateSource::Adaptive));
    // Over the 1.1 s since the first report.
    let took = (2400.0 - 202.0) / 1.1;
    let rate = f.rate.expect("metered");
    assert!((rate - 0.7 * took).abs() < 1.0, "backed off to {rate}, 0.7 of {took}");
    assert_eq!(f.pauses, 0);
    assert_eq!(f.backoffs, 1);
    assert!(
        out.iter().any(|c| matches!(c, Command::Pace { pace, .. } if pace.metered)),
        "workers told to meter"
    );
    // Refusals of requests sent before the back-off are not a second one.
    now += INTERVAL;
    p.traffic(&Traffic { throttled: 1, ..clean(1, 140) }, now, &mut out);
    assert_eq!(p.figures().backoffs, 1);
    // At the plateau, 0.7 of the rate, the refusals stop: they went with the rate. It holds
    // there until that tells (from the DRAIN on, answers that would hold 10 refusals at the
    // trigger's share), then climbs, long before the plateau's second is over.
    let backed_off = now - INTERVAL;
    while (p.figures().rate.expect("metered") - 0.7 * took).abs() < 1.0 {
        assert!(now < backed_off + throttle::DRAIN + 2 * INTERVAL, "still held once they told");
        now += INTERVAL;
        p.traffic(&clean(1, 140), now, &mut out);
    }
    assert!(now > backed_off + throttle::DRAIN, "held until the drain");
    // No refusals: back where it was refused the recovery time after the climb began (a report
    // ago), free a while later.
    now += throttle::RECOVERY - INTERVAL;
    p.wake(now, &mut out);
    let climbed = p.figures().rate.expect("still metered");
    let back = throttle::SETTLE * took;
    assert!((climbed - back).abs() < 0.02 * back, "climbed to {climbed}, back to 0.95 of {took}");
    now += Duration::from_secs(32);
    p.wake(now, &mut out);
    assert_eq!(p.figures().rate, None, "given up once far past the refusals");
    assert!(p.limit() > 0);
}

#[test]
fn refusals_that_do_not_stop_at_the_plateau_free_the_rate_and_are_the_servers_noise() {
    let (mut p, mut now, mut out) = unmetered_pair();
    // 3% refused at random, whatever the rate: not clearly above 2% in 200 answers; in 2,000
    // it is, and the rate backs off.
    let noisy = |n: u32| Traffic { throttled: n * 3 / 100, too_many: n * 3 / 100, ..clean(1, n) };
    now += INTERVAL;
    p.traffic(&noisy(200), now, &mut out);
    assert_eq!(p.figures().backoffs, 0, "6 of 200 could be 2% by chance");
    now += INTERVAL;
    p.traffic(&noisy(1800), now, &mut out);
    assert_eq!(p.figures().backoffs, 1);
    let backed_off = now;
    assert_eq!(p.figures().rate_source, Some(RateSource::Adaptive));
    // At the plateau they come as often: they are not the rate's. The rate is given up as soon
    // as they tell (3% of 140 a report: 10 expected after the DRAIN and 3 reports), long before
    // the plateau is over.
    while p.figures().rate.is_some() {
        now += INTERVAL;
        p.traffic(&noisy(140), now, &mut out);
        assert!(p.figures().backoffs == 1, "backed off again at the plateau");
        assert!(now < backed_off + throttle::DRAIN + 4 * INTERVAL, "still metered once they told");
    }
    // And the same share later backs nothing off; a share well past it does.
    for _ in 0..30 {
        now += INTERVAL;
        p.traffic(&noisy(200), now, &mut out);
    }
    assert_eq!((p.figures().backoffs, p.figures().rate), (1, None));
    for _ in 0..5 {
        now += INTERVAL;
        p.traffic(&Traffic { throttled: 40, too_many: 40, ..clean(1, 200) }, now, &mut out);
    }
    assert_eq!(p.figures().backoffs, 2, "20% refused is past the noise");
}

#[test]
fn an_announced_limit_meters_the_fleet_unless_a_rate_was_given() {
    let t = Traffic {
        requests: 1,
        announced: Some(Announced {
            limit: Some(2000),
            window_ms: Some(1000),
            remaining: Some(1999),
            reset_ms: Some(1000),
        }),
        ..Traffic::default()
    };
    let mut f = Fleet::new(settings(None, None, None), 2);
    assert!(f.paces.iter().all(|(_, p)| !p.metered));
    let mut out = Vec::new();
    f.pacer.traffic(&t, f.now, &mut out);
    f.apply(out);
    assert_eq!(f.pacer.figures().rate, Some(2000.0 * ANNOUNCED_SHARE));
    let last: Vec<bool> =
        (0..2).map(|s| f.paces.iter().rev().find(|(slot, _)| *slot == s).expect("told").1.metered).collect();
    assert_eq!(last, [true, true], "both workers now need permits");

    let mut f = Fleet::new(settings(Some(50.0), None, None), 2);
    let mut out = Vec::new();
    f.pacer.traffic(&t, f.now, &mut out);
    assert_eq!(f.pacer.figures().rate, Some(50.0), "--rate wins over the headers");
    // Without a window: what is left, spread over what is left of it.
    let mut f = Fleet::new(settings(None, None, None), 1);
    let t = Traffic {
        requests: 1,
        announced: Some(Announced {
            limit: Some(5000),
            window_ms: None,
            remaining: Some(3600),
            reset_ms: Some(1_800_000),
        }),
        ..Traffic::default()
    };
    let mut out = Vec::new();
    f.pacer.traffic(&t, f.now, &mut out);
    assert_eq!(f.pacer.figures().rate, Some(2.0 * ANNOUNCED_SHARE));
}

fn clean(latency_ms: u64, requests: u32) -> Traffic {
    Traffic {
        requests,
        latency_us: latency_ms * 1000 * u64::from(requests),
        statuses: vec![(200, requests)],
        ..Traffic::default()
    }
}

/// Feeds the controller `traffic` once an interval for `intervals`; returns the limits seen.
fn drive(p: &mut Pacer, now: &mut Instant, intervals: usize, traffic: impl Fn(u32) -> Traffic) -> Vec<u32> {
    let mut seen = Vec::new();
    for _ in 0..intervals {
        *now += INTERVAL;
        let mut out = Vec::new();
        p.traffic(&traffic(p.limit()), *now, &mut out);
        seen.push(p.limit());
    }
    seen
}

#[test]
fn the_limit_grows_to_the_ceiling_on_a_slow_clean_api() {
    let mut now = Instant::now();
    let mut p = Pacer::new(settings(None, None, None), 4, now);
    assert_eq!(p.limit(), 4 * START_PER_WORKER);
    // 20ms answers whatever the load: a server that is slow, not saturated.
    let seen = drive(&mut p, &mut now, 10, |limit| clean(20, limit * 10));
    let start = 4 * START_PER_WORKER;
    let doubled: Vec<u32> = (1..=4).map(|k| (start << k).min(1024)).collect();
    assert_eq!(seen[..4], doubled[..], "doubles while clean");
    assert_eq!(p.limit(), 1024, "stops at the ceiling");
}

#[test]
fn the_limit_holds_on_429s_and_backs_off_when_latency_queues() {
    let mut now = Instant::now();
    let mut p = Pacer::new(settings(None, None, None), 4, now);
    while p.limit() < 512 {
        drive(&mut p, &mut now, 1, |l| clean(20, l));
    }
    assert_eq!(p.limit(), 512);
    // Refusals are answered with a rate: the limit holds, and slow start ends.
    let throttled = |l: u32| Traffic { throttled: l / 10, too_many: 5, ..clean(20, l) };
    assert_eq!(drive(&mut p, &mut now, 2, throttled), [512, 512]);
    assert_eq!(p.figures().rate_source, Some(RateSource::Adaptive));
    // Out of slow start: clean answers now grow it by about its square root.
    let grown = drive(&mut p, &mut now, 1, |l| clean(20, l))[0];
    assert_eq!(grown, 512 + 22);
    // Latency past twice the baseline plus slack, twice in a row: requests are queueing;
    // shrink by a tenth. Once is not enough (new connections being set up).
    let held = drive(&mut p, &mut now, 1, |l| clean(60, l))[0];
    assert_eq!(held, grown, "one slow interval");
    let shrunk = drive(&mut p, &mut now, 1, |l| clean(60, l))[0];
    assert_eq!(shrunk, ((512.0 + 512f64.sqrt()) * 0.9) as u32);
    let report = p.figures();
    assert_eq!(
        (report.concurrency_range.0, report.concurrency_range.1, report.too_many),
        (4 * START_PER_WORKER, grown, 10)
    );
}

#[test]
fn a_fixed_concurrency_is_split_among_the_workers_and_stays() {
    let mut f = Fleet::new(settings(None, None, Some(10)), 4);
    let shares = |f: &Fleet| -> Vec<u32> {
        (0..4)
            .map(|s| f.paces.iter().rev().find(|(slot, _)| *slot == s).expect("told").1.concurrency)
            .collect()
    };
    assert_eq!(shares(&f), [3, 3, 2, 2]);
    let mut out = Vec::new();
    f.pacer.leave(3, &mut out);
    f.apply(out);
    assert_eq!(shares(&f)[..3], [4, 3, 3], "a leaving worker's share goes to the others");
    let mut now = f.now;
    drive(&mut f.pacer, &mut now, 5, |l| clean(20, l));
    assert_eq!(f.pacer.limit(), 10);
}

#[test]
fn between_clean_and_queueing_the_limit_holds() {
    let mut now = Instant::now();
    let mut p = Pacer::new(settings(None, None, None), 4, now);
    drive(&mut p, &mut now, 2, |l| clean(20, l));
    let throttled = |l: u32| Traffic { throttled: 1, ..clean(20, l) };
    let after_cut = drive(&mut p, &mut now, 1, throttled)[0];
    // 42ms against a 20ms baseline (which drifts up 1% an interval): past 2x, short of
    // 2x + 2ms.
    assert_eq!(drive(&mut p, &mut now, 3, |l| clean(42, l)), [after_cut; 3], "it holds");
    let grows = drive(&mut p, &mut now, 1, |l| clean(20, l))[0];
    assert!(grows > after_cut, "clean again: it grows");
}

#[test]
fn permits_go_to_workers_with_ids_and_an_idle_workers_are_taken_back() {
    // A burst of 1 among 3 workers: a permit stuck with a worker that has nothing to fetch
    // would stop the fleet.
    let mut f = Fleet::new(settings(Some(10.0), Some(1), None), 3);
    for slot in 1..3 {
        let mut out = Vec::new();
        f.pacer.busy(slot, 1, false, f.now, &mut out);
        f.apply(out);
    }
    for _ in 0..200 {
        f.step(Duration::from_millis(10), &[true, false, false]);
    }
    assert_eq!((f.hand[1], f.hand[2]), (0, 0), "idle workers get nothing");
    assert!(f.spends.len() >= 17, "worker 0 got the rate: {} in 2s", f.spends.len());
    // Worker 0 finishes while holding its permit, worker 1 gets ids: the permit comes back
    // and worker 1 gets the rate.
    let mut out = Vec::new();
    f.pacer.spent(0, 1, 0, f.now, &mut out);
    f.apply(out);
    for _ in 0..20 {
        f.step(Duration::from_millis(10), &[false, false, false]);
    }
    let mut out = Vec::new();
    f.pacer.busy(0, 1, false, f.now, &mut out);
    assert!(out.iter().any(|c| matches!(c, Command::Pause { slot: 0, ms: 0, .. })), "{out:?}");
    f.apply(out);
    let mut out = Vec::new();
    f.pacer.busy(1, 1, true, f.now, &mut out);
    f.apply(out);
    let before = f.spends.len();
    for _ in 0..100 {
        f.step(Duration::from_millis(10), &[false, true, false]);
    }
    assert!(f.spends.len() - before >= 8, "worker 1 got the rate: {} in 1s", f.spends.len() - before);
}

#[test]
fn an_outage_opens_the_circuit_only_probes_go_and_an_answer_closes_it() {
    let mut f = Fleet::new(settings(Some(1000.0), Some(100), None), 3);
    let alive = [true; 3];
    for _ in 0..20 {
        f.step(Duration::from_millis(10), &alive);
    }
    let failing = |requests: u32| Traffic { requests, statuses: vec![(503, requests)], ..Traffic::default() };
    // A few failures among many answers are an API's bad luck: nothing opens.
    let mut out = Vec::new();
    let mixed = Traffic { requests: 100, statuses: vec![(200, 95), (500, 5)], ..Traffic::default() };
    f.pacer.traffic(&mixed, f.now, &mut out);
    assert!(!f.pacer.circuit_open());
    // A second later every request fails: the circuit opens, every worker is told so, and
    // those holding permits drop them.
    f.now += Duration::from_millis(1100);
    f.pacer.traffic(&failing(40), f.now, &mut out);
    f.apply(out);
    assert!(f.pacer.circuit_open());
    assert!(f.hand.iter().all(|&h| h == 0), "permits in hand were dropped: {:?}", f.hand);
    let mut told: Vec<usize> =
        f.paces.iter().filter(|(_, p)| p.circuit_open && p.metered).map(|&(s, _)| s).collect();
    told.sort_unstable();
    told.dedup();
    assert_eq!(told, [0, 1, 2], "{:?}", f.paces);
    let opened = f.now;
    let held = f.pacer.held_back(f.now).expect("something holds the fleet back");
    assert!(held.starts_with("circuit open: 100% of requests failed (HTTP 503)"), "{held}");
    // Ten seconds of outage: only probes, 250ms after opening, then 500ms, then every second,
    // round the workers; each fails.
    let before = f.spends.len();
    while f.now < opened + Duration::from_secs(10) {
        let spent = f.spends.len();
        f.step(Duration::from_millis(10), &alive);
        if f.spends.len() > spent {
            let mut out = Vec::new();
            f.pacer.traffic(&failing((f.spends.len() - spent) as u32), f.now, &mut out);
            f.apply(out);
        }
    }
    let probes: Vec<Duration> = f.spends[before..].iter().map(|&t| t - opened).collect();
    assert!((10..=12).contains(&probes.len()), "{} probes in 10 s: {probes:?}", probes.len());
    assert!(probes[0] >= Duration::from_millis(250) && probes[0] < Duration::from_millis(300), "{probes:?}");
    assert!(probes.windows(2).all(|w| w[1] - w[0] <= Duration::from_millis(1020)), "{probes:?}");
    assert_eq!(f.pacer.figures().probes, probes.len() as u64);
    // The next probe is answered: the circuit closes and the rate resumes from an empty bucket.
    let mut out = Vec::new();
    let answered = Traffic { requests: 1, statuses: vec![(200, 1)], ..Traffic::default() };
    f.pacer.traffic(&answered, f.now, &mut out);
    f.apply(out);
    assert!(!f.pacer.circuit_open());
    assert!(f.paces.last().is_some_and(|(_, p)| !p.circuit_open && p.metered), "{:?}", f.paces.last());
    let resumed = f.now;
    let before = f.spends.len();
    while f.now < resumed + Duration::from_millis(500) {
        f.step(Duration::from_millis(5), &alive);
    }
    let after = f.spends.len() - before;
    assert!((400..=560).contains(&after), "{after} sent in the first 500ms at 1000/s");
    let p = f.pacer.figures();
    assert_eq!(p.outages, 1);
    assert!((p.outage_secs - (resumed - opened).as_secs_f64()).abs() < 1e-6, "{}", p.outage_secs);
    // The failures of the outage are forgotten: answers that fail now and then do not reopen it.
    let mut out = Vec::new();
    f.pacer.traffic(&mixed, f.now, &mut out);
    assert!(!f.pacer.circuit_open());
}

#[test]
fn refusals_do_not_open_the_circuit_and_an_outage_ends_a_backed_off_rate() {
    let mut f = Fleet::new(settings(None, None, None), 2);
    let mut out = Vec::new();
    let refused = Traffic {
        requests: 50,
        too_many: 50,
        throttled: 50,
        statuses: vec![(429, 50)],
        ..Traffic::default()
    };
    f.pacer.traffic(&refused, f.now, &mut out);
    assert!(!f.pacer.circuit_open(), "a server that refuses is up");
    // Refusals backed the rate off; then the API went down without a word (no answers).
    let ok = Traffic { requests: 100, statuses: vec![(200, 100)], ..Traffic::default() };
    f.now += Duration::from_millis(500);
    f.pacer.traffic(&ok, f.now, &mut out);
    let refusing = Traffic {
        requests: 20,
        too_many: 10,
        throttled: 10,
        statuses: vec![(200, 10), (429, 10)],
        ..Traffic::default()
    };
    f.now += Duration::from_millis(100);
    f.pacer.traffic(&refusing, f.now, &mut out);
    assert_eq!(f.pacer.figures().rate_source, Some(RateSource::Adaptive));
    f.now += Duration::from_millis(1100);
    f.pacer.traffic(&Traffic { requests: 30, ..Traffic::default() }, f.now, &mut out);
    assert!(f.pacer.circuit_open());
    assert!(f.pacer.held_back(f.now).is_some_and(|h| h.contains("no answer")));
    assert_eq!(f.pacer.figures().rate, None, "the backed-off rate measured the outage, not a limit");
}

#[test]
fn an_api_that_never_answered_holds_attempts_until_it_does_and_a_long_outage_stops_holding_them() {
    let mut f = Fleet::new(settings(None, None, None), 2);
    let mut out = Vec::new();
    let refused =
        Traffic { requests: 50, unanswered: Some("connection refused".into()), ..Traffic::default() };
    f.pacer.traffic(&refused, f.now, &mut out);
    assert!(f.pacer.circuit_open(), "no attempt is spent on an API that has not answered");
    assert_eq!(
        f.pacer.held_back(f.now + Duration::from_secs(400)).as_deref(),
        Some("no answer yet from 127.0.0.1:9: connection refused (for 400s)"),
        "past --outage-max too: it is the wait for a first answer"
    );
    f.pacer.traffic(&clean(1, 10), f.now, &mut out);
    assert!(!f.pacer.circuit_open(), "its first answer");
    let refused = Traffic { requests: 50, ..Traffic::default() };
    f.now += Duration::from_millis(300);
    f.pacer.traffic(&refused, f.now, &mut out);
    f.apply(out);
    assert!(f.pacer.circuit_open());
    assert!(f.paces.iter().rev().take(2).all(|(_, p)| p.circuit_open));
    let opened = f.now;
    while f.now < opened + Duration::from_secs(301) {
        f.step(Duration::from_millis(500), &[true, true]);
    }
    assert!(f.pacer.circuit_open(), "still down: still only probes");
    let last: Vec<Pace> =
        (0..2).map(|s| f.paces.iter().rev().find(|(slot, _)| *slot == s).expect("told").1).collect();
    assert!(last.iter().all(|p| p.metered && !p.circuit_open), "past --outage-max attempts count: {last:?}");
}

/// One answer announcing `limit` with `remaining` and a reset in `reset_ms`, and no window.
fn limit_without_window(limit: u64, remaining: u64, reset_ms: u64) -> Traffic {
    let announced = Announced {
        limit: Some(limit),
        window_ms: None,
        remaining: Some(remaining),
        reset_ms: Some(reset_ms),
    };
    Traffic { requests: 1, announced: Some(announced), ..Traffic::default() }
}

/// `requests` answered, `refused` of them 429, naming a wait of `wait_ms` or none.
fn refused_429s(requests: u32, refused: u32, wait_ms: Option<u64>) -> Traffic {
    Traffic {
        requests,
        throttled: refused,
        too_many: refused,
        wait_ms,
        statuses: vec![(200, requests - refused), (429, refused)],
        ..Traffic::default()
    }
}

#[test]
fn a_limit_with_resets_but_no_window_keeps_to_the_window_the_resets_show() {
    // slowapi, "500/second": resets up to 2 s away (a Redis TTL in whole seconds).
    let mut f = Fleet::new(settings(None, None, None), 2);
    let mut out = Vec::new();
    for (remaining, reset) in [(499, 1999), (300, 999), (120, 1400), (499, 1998)] {
        f.pacer.traffic(&limit_without_window(500, remaining, reset), f.now, &mut out);
        f.now += Duration::from_millis(300);
    }
    assert_eq!(f.pacer.figures().rate, Some(500.0 * ANNOUNCED_SHARE), "a window of a second");
    assert_eq!(f.pacer.figures().rate_source, Some(RateSource::Announced));
    // "3000/minute": resets up to a minute (and a second) away; what remains of the window
    // spread over it when that is less.
    let mut f = Fleet::new(settings(None, None, None), 2);
    f.pacer.traffic(&limit_without_window(3000, 3000, 60_000), f.now, &mut out);
    assert_eq!(f.pacer.figures().rate, Some(50.0 * ANNOUNCED_SHARE));
    let mut f = Fleet::new(settings(None, None, None), 2);
    f.pacer.traffic(&limit_without_window(3000, 1000, 40_000), f.now, &mut out);
    assert_eq!(f.pacer.figures().rate, Some(25.0 * ANNOUNCED_SHARE), "1,000 left for 40 s: never past it");
}

#[test]
fn a_fixed_window_that_pauses_the_fleet_again_is_kept_to_at_the_quota_it_took() {
    // 2,000 a window of a second, each refusal with Retry-After: 1 (counted from the refusal,
    // so the pause outlasts the window it waited for).
    let t0 = Instant::now();
    let mut p = Pacer::new(settings(None, None, None), 2, t0);
    let mut out = Vec::new();
    p.traffic(&refused_429s(100, 50, Some(1000)), t0, &mut out);
    assert_eq!(p.figures().pauses, 1, "half refused: the whole client waits");
    // The fleet resumes at t0 + 1 s, spends the window's quota at once, and is refused again.
    p.traffic(&clean(1, 2000), t0 + Duration::from_millis(1200), &mut out);
    p.traffic(&refused_429s(400, 400, Some(1000)), t0 + Duration::from_millis(1250), &mut out);
    let f = p.figures();
    assert_eq!(f.pauses, 2);
    assert_eq!(f.rate_source, Some(RateSource::Adaptive));
    // Over the whole cycle 2,050 in 1.25 s (1,640/s); the quota since it resumed, over the
    // second it waited, 2,000: the larger, less 5%.
    assert_eq!(f.rate, Some(1900.0), "{f:?}");
}

#[test]
fn bare_429s_that_would_pause_the_fleet_with_a_retry_after_pause_it_for_a_second() {
    let t0 = Instant::now();
    let mut p = Pacer::new(settings(None, None, None), 2, t0);
    let mut out = Vec::new();
    p.traffic(&refused_429s(1000, 10, None), t0, &mut out);
    assert_eq!(p.figures().pauses, 0, "1% with no wait named: the requests' own backoff");
    p.traffic(&refused_429s(100, 100, None), t0 + Duration::from_millis(100), &mut out);
    assert_eq!(p.figures().pauses, 1, "110 of 1,100: the whole client is limited");
    assert_eq!(p.paused_until(t0 + Duration::from_millis(100)), Some(t0 + Duration::from_millis(1100)));
    // 503s with no wait are the circuit's to judge, not a pause's.
    let mut p = Pacer::new(settings(None, None, None), 2, t0);
    let unavailable =
        Traffic { requests: 100, throttled: 100, statuses: vec![(503, 100)], ..Traffic::default() };
    p.traffic(&unavailable, t0, &mut out);
    assert_eq!(p.figures().pauses, 0);
}
