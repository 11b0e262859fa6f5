//! CPU time per transfer: each of the target's processes and the load
//! generator, read from `/proc/<pid>/stat` (user and system time of all
//! threads, [`super::paymesh::process_cpu_seconds`]) when the measured
//! period starts and when it ends: 10 ms of resolution, well under a percent
//! of a measured period of seconds.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::paymesh::process_cpu_seconds;
use super::report::ProcessCpu;

/// The name the load generator (this process) is reported under.
pub const LOAD_GENERATOR: &str = "load generator";

/// Each process's CPU time at one instant (`None`: unreadable).
type Reading = Vec<Option<f64>>;

/// Readings of every process at the two ends of the measured period.
#[derive(Debug)]
pub struct Meter {
    processes: Vec<(String, u32)>,
    ends: Option<JoinHandle<(Reading, Reading)>>,
}

impl Meter {
    /// Read `processes` and this one at `start` and at `end` (in a task of
    /// its own). Nothing is read when `processes` is empty.
    pub fn start(mut processes: Vec<(String, u32)>, start: Instant, end: Instant) -> Meter {
        if processes.is_empty() {
            return Meter { processes, ends: None };
        }
        processes.push((LOAD_GENERATOR.to_owned(), std::process::id()));
        let pids: Vec<u32> = processes.iter().map(|(_, pid)| *pid).collect();
        let ends = tokio::spawn(async move {
            let read = |pids: &[u32]| -> Reading { pids.iter().map(|&pid| process_cpu_seconds(pid)).collect() };
            tokio::time::sleep_until(start).await;
            let first = read(&pids);
            tokio::time::sleep_until(end).await;
            (first, read(&pids))
        });
        Meter { processes, ends: Some(ends) }
    }

    /// Each process's CPU time over the period and per `committed`
    /// transfer; a process unreadable at either end is left out.
    pub async fn read(self, committed: u64) -> Vec<ProcessCpu> {
        let Some(ends) = self.ends else { return Vec::new() };
        let Ok(Ok((first, last))) = tokio::time::timeout(Duration::from_secs(5), ends).await else {
            return Vec::new();
        };
        self.processes
            .into_iter()
            .zip(first.into_iter().zip(last))
            .filter_map(|((process, _), ends)| match ends {
                (Some(first), Some(last)) => {
                    let cpu_s = (last - first).max(0.0);
                    let us_per_transfer = if committed > 0 { cpu_s * 1e6 / committed as f64 } else { 0.0 };
                    Some(ProcessCpu { process, cpu_s, us_per_transfer })
                }
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_cpu_time_that_grows() {
        let before = process_cpu_seconds(std::process::id()).expect("own stat");
        let started = std::time::Instant::now();
        let mut spin = 0u64;
        while started.elapsed() < Duration::from_millis(200) {
            spin = spin.wrapping_add(1);
        }
        std::hint::black_box(spin);
        let after = process_cpu_seconds(std::process::id()).expect("own stat");
        assert!(after - before >= 0.1, "{before} then {after}");
    }
}
