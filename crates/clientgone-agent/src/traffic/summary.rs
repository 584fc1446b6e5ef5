//! [`Summary`]: what the generator did, per kind — to hold against the counters.

use std::fmt::{self, Write as _};
use std::time::Duration;

use super::client::Failure;
use super::kind::Kind;

/// Per-kind tallies of one run.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Requests that went as scripted, per kind ([`Kind::ALL`] order).
    pub ok: [u64; Kind::COUNT],
    /// Requests that did not (connection refused, unexpected answer, …).
    pub failed: [u64; Kind::COUNT],
    /// The first failure message of each kind.
    pub first_failure: [Option<String>; Kind::COUNT],
    /// How long the run took.
    pub elapsed: Duration,
}

impl Summary {
    pub(crate) fn record(&mut self, kind: Kind, outcome: Result<(), Failure>) {
        let i = kind.index();
        match outcome {
            Ok(()) => self.ok[i] += 1,
            Err(why) => {
                self.failed[i] += 1;
                self.first_failure[i].get_or_insert(why);
            }
        }
    }

    /// Requests that went as scripted, of one kind.
    pub fn ok(&self, kind: Kind) -> u64 {
        self.ok[kind.index()]
    }

    /// All requests sent.
    pub fn sent(&self) -> u64 {
        self.ok.iter().sum::<u64>() + self.failed.iter().sum::<u64>()
    }

    /// All requests that failed.
    pub fn failed_total(&self) -> u64 {
        self.failed.iter().sum()
    }

    pub(crate) fn progress_line(&self) -> String {
        let mut line = String::new();
        for kind in Kind::ALL {
            let _ = write!(line, "{} {}  ", kind.name(), self.ok(kind));
        }
        if self.failed_total() > 0 {
            let _ = write!(line, "failed {}", self.failed_total());
        }
        line
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<18} {:>7} {:>7}  expected on /metrics",
            "kind", "ok", "failed"
        )?;
        for kind in Kind::ALL {
            let e = kind.expectation();
            let labels: Vec<String> = e
                .labels()
                .iter()
                .map(|(name, value)| format!("{name}=\"{value}\""))
                .collect();
            let expect = format!("{}{{{}}}", e.metric(), labels.join(","));
            writeln!(
                f,
                "{:<18} {:>7} {:>7}  +{} {expect}",
                kind.name(),
                self.ok(kind),
                self.failed[kind.index()],
                self.ok(kind)
            )?;
        }
        write!(
            f,
            "{} requests in {:.1?} ({:.0}/s)",
            self.sent(),
            self.elapsed,
            self.sent() as f64 / self.elapsed.as_secs_f64().max(1e-9)
        )?;
        for kind in Kind::ALL {
            if let Some(why) = &self.first_failure[kind.index()] {
                write!(f, "\nfirst {} failure: {why}", kind.name())?;
            }
        }
        Ok(())
    }
}
