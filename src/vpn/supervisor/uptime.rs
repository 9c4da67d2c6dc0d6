//! The uptime ratio over the last 24 hours.

use std::collections::VecDeque;
use std::time::Instant;

/// Time up over time observed, per minute, for the last 24 hours.
#[derive(Default)]
pub(super) struct Uptime {
    minutes: VecDeque<(u64, f64, f64)>,
    last: Option<Instant>,
}

impl Uptime {
    /// Adds the time since the last sample as up or down; the ratio over the last 24 hours.
    pub(super) fn add(&mut self, up: bool) -> f64 {
        self.add_at(Instant::now(), crate::clock::now(), up)
    }

    /// [`Uptime::add`] at a given monotonic instant and wall-clock second.
    fn add_at(&mut self, now: Instant, wall: i64, up: bool) -> f64 {
        let elapsed = self.last.map(|l| now.duration_since(l).as_secs_f64()).unwrap_or(0.0);
        self.last = Some(now);
        let minute = (wall / 60) as u64;
        match self.minutes.back_mut() {
            Some((m, u, t)) if *m == minute => {
                *t += elapsed;
                if up {
                    *u += elapsed;
                }
            }
            _ => self.minutes.push_back((minute, if up { elapsed } else { 0.0 }, elapsed)),
        }
        while self.minutes.front().is_some_and(|(m, _, _)| *m + 1440 <= minute) {
            self.minutes.pop_front();
        }
        let (u, t) = self.minutes.iter().fold((0.0, 0.0), |(u, t), (_, mu, mt)| (u + mu, t + mt));
        if t > 0.0 { u / t } else { 0.0 }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::Uptime;

    #[test]
    fn the_ratio_weighs_time_up_against_time_observed() {
        let (t0, wall) = (Instant::now(), 1_700_000_000);
        let mut u = Uptime::default();
        assert_eq!(u.add_at(t0, wall, true), 0.0, "nothing observed yet");
        // 30 s up, then 10 s down: 30 of 40 seconds.
        assert_eq!(u.add_at(t0 + Duration::from_secs(30), wall + 30, true), 1.0);
        let r = u.add_at(t0 + Duration::from_secs(40), wall + 40, false);
        assert!((r - 0.75).abs() < 1e-9, "{r}");
        // Across minutes: another 80 s down makes 30 of 120.
        let r = u.add_at(t0 + Duration::from_secs(120), wall + 120, false);
        assert!((r - 0.25).abs() < 1e-9, "{r}");
    }

    #[test]
    fn minutes_older_than_a_day_are_forgotten() {
        let (t0, wall) = (Instant::now(), 1_700_000_000 / 60 * 60);
        let mut u = Uptime::default();
        u.add_at(t0, wall, false);
        // An hour down, then a day and a minute later one minute up: the hour is gone.
        u.add_at(t0 + Duration::from_secs(3600), wall + 3600, false);
        let later = 3600 + 86_400 + 60;
        u.add_at(t0 + Duration::from_secs(later), wall + later as i64, true);
        let r = u.add_at(t0 + Duration::from_secs(later + 60), wall + later as i64 + 60, true);
        assert!(r > 0.0 && r <= 1.0, "{r}");
        assert!(u.minutes.len() <= 1441, "{}", u.minutes.len());
        assert!(u.minutes.iter().all(|(m, _, _)| *m + 1440 > ((wall + later as i64 + 60) / 60) as u64));
    }
}
