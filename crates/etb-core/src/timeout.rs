//! Timeouts and deadlines, validated once and shared by every wait of a call.
//!
//! Rules (the same for every function of the library that takes a timeout in seconds):
//! a finite value >= 0 or +infinity; NaN and negative values are invalid; 0 means a single
//! attempt with no sleep. A wait never reports a timeout before its deadline.

use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};

/// A validated timeout: a bounded duration, or none at all (+infinity).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Timeout {
    After(Duration),
    Never,
}

impl Timeout {
    /// Validates a timeout given in seconds; `what` names the argument in the error message.
    pub fn from_secs_f64(seconds: f64, what: &str) -> Result<Timeout> {
        if seconds.is_nan() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("{what} is NaN; give a number of seconds >= 0, or +infinity to wait forever"),
            ));
        }
        if seconds < 0.0 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("{what} is {seconds}; give a number of seconds >= 0, or +infinity to wait forever"),
            ));
        }
        if seconds.is_infinite() {
            return Ok(Timeout::Never);
        }
        // Duration::try_from_secs_f64 rejects values past ~5.8e11 years: treat them as forever.
        Ok(Duration::try_from_secs_f64(seconds).map(Timeout::After).unwrap_or(Timeout::Never))
    }

    /// The deadline this timeout sets when counted from now.
    pub fn start(self) -> Deadline {
        let now = Instant::now();
        match self {
            Timeout::After(d) => Deadline { start: now, at: now.checked_add(d) },
            Timeout::Never => Deadline { start: now, at: None },
        }
    }
}

/// A point in monotonic time after which a wait gives up (`None`: never).
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    start: Instant,
    at: Option<Instant>,
}

impl Deadline {
    /// Time left before the deadline (`None`: unbounded; zero once passed).
    pub fn remaining(&self) -> Option<Duration> {
        self.at.map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// This deadline, or `step` from now if that comes first (for a wait in short slices).
    pub fn capped(&self, step: Duration) -> Deadline {
        let soon = Instant::now().checked_add(step);
        let at = match (self.at, soon) {
            (Some(at), Some(soon)) => Some(at.min(soon)),
            (at, soon) => at.or(soon),
        };
        Deadline { start: self.start, at }
    }

    pub fn expired(&self) -> bool {
        matches!(self.remaining(), Some(d) if d.is_zero())
    }

    /// Seconds since the deadline was set, for error messages.
    pub fn elapsed_secs(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Sleeps for `step`, but never past the deadline. Returns false (without sleeping) when
    /// the deadline has already passed, so a poll loop ends with exactly one attempt at the
    /// deadline and never reports a timeout before it.
    pub fn sleep_step(&self, step: Duration) -> bool {
        match self.remaining() {
            Some(left) if left.is_zero() => false,
            Some(left) => {
                std::thread::sleep(step.min(left));
                true
            }
            None => {
                std::thread::sleep(step);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(Timeout::from_secs_f64(f64::NAN, "t").is_err());
        assert!(Timeout::from_secs_f64(-0.001, "t").is_err());
        assert!(Timeout::from_secs_f64(f64::NEG_INFINITY, "t").is_err());
        assert_eq!(Timeout::from_secs_f64(f64::INFINITY, "t").unwrap(), Timeout::Never);
        assert_eq!(Timeout::from_secs_f64(0.0, "t").unwrap(), Timeout::After(Duration::ZERO));
        assert_eq!(Timeout::from_secs_f64(-0.0, "t").unwrap(), Timeout::After(Duration::ZERO));
        assert_eq!(Timeout::from_secs_f64(1.5, "t").unwrap(), Timeout::After(Duration::from_millis(1500)));
        assert_eq!(Timeout::from_secs_f64(1e300, "t").unwrap(), Timeout::Never);
        let e = Timeout::from_secs_f64(-2.0, "connection_timeout_s").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.message().contains("connection_timeout_s"), "{e}");
    }

    #[test]
    fn zero_deadline_is_expired_and_does_not_sleep() {
        let d = Timeout::After(Duration::ZERO).start();
        assert!(d.expired());
        let t = Instant::now();
        assert!(!d.sleep_step(Duration::from_secs(1)));
        assert!(t.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn sleep_step_stops_at_deadline() {
        let d = Timeout::After(Duration::from_millis(30)).start();
        let t = Instant::now();
        while d.sleep_step(Duration::from_secs(1)) {}
        let e = t.elapsed();
        assert!(e >= Duration::from_millis(30), "{e:?}");
        assert!(d.expired());
        assert!(Timeout::Never.start().remaining().is_none());
    }
}
