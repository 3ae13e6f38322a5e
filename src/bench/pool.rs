//! A fixed set of worker threads fed on a schedule: job `i` becomes available `arrivals[i]`
//! seconds after the start and runs on the first idle worker, so the number of workers is the
//! concurrency cap while the schedule stays independent of it (SGLang's semaphore semantics).

use std::sync::mpsc;
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Each worker holds one blocking connection and little else; a small stack lets a run with
/// thousands of concurrent requests fit in memory.
const WORKER_STACK: usize = 512 * 1024;

/// Runs `job(i)` for every `i` in `0..arrivals.len()` on `workers` threads (at least one, at
/// most one per job) and returns the results in job order.
pub fn run_scheduled<T: Send>(
    arrivals: &[f64],
    workers: usize,
    job: impl Fn(usize) -> T + Sync,
) -> anyhow::Result<Vec<T>> {
    let n = arrivals.len();
    let workers = workers.clamp(1, n.max(1));
    let (tx, rx) = mpsc::channel::<usize>();
    let rx = Mutex::new(rx);
    let results: Mutex<Vec<Option<T>>> = Mutex::new((0..n).map(|_| None).collect());
    let start = Instant::now();
    thread::scope(|scope| -> anyhow::Result<()> {
        for _ in 0..workers {
            thread::Builder::new()
                .stack_size(WORKER_STACK)
                .spawn_scoped(scope, || work(&rx, &results, &job))
                .context("starting a benchmark worker thread")?;
        }
        for (i, &at) in arrivals.iter().enumerate() {
            let wait = Duration::try_from_secs_f64(at).unwrap_or_default();
            let due = start.checked_add(wait).unwrap_or(start);
            thread::sleep(due.saturating_duration_since(Instant::now()));
            if tx.send(i).is_err() {
                break;
            }
        }
        drop(tx);
        Ok(())
    })?;
    let results: Vec<T> = results.into_inner().unwrap_or_else(PoisonError::into_inner).into_iter().flatten().collect();
    if results.len() != n {
        bail!("{} of {n} benchmark jobs did not finish", n - results.len());
    }
    Ok(results)
}

fn work<T>(rx: &Mutex<mpsc::Receiver<usize>>, results: &Mutex<Vec<Option<T>>>, job: &(impl Fn(usize) -> T + Sync)) {
    loop {
        let next = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(i) = next else {
            return;
        };
        let out = job(i);
        if let Some(slot) = results.lock().unwrap_or_else(PoisonError::into_inner).get_mut(i) {
            *slot = Some(out);
        }
    }
}
