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
    pub(super) fn add(&mut self, up: bool) -> f64 {
        let now = Instant::now();
        let elapsed = self.last.map(|l| now.duration_since(l).as_secs_f64()).unwrap_or(0.0);
        self.last = Some(now);
        let minute = (crate::clock::now() / 60) as u64;
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
