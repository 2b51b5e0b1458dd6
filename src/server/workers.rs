//! A few threads for CPU-heavy work: the Diffie-Hellman exponentiations of
//! each handshake.
//!
//! Connection threads wait for the answer instead of computing it, so
//! their stacks stay small (an idle connection keeps every stack page its
//! thread ever touched) and a flood of handshakes cannot run more
//! exponentiations at once than there are workers. The pool belongs to
//! the server; its threads end when it is dropped.

use std::thread::JoinHandle;

use crossbeam_channel::{bounded, unbounded, Sender};

type Job = Box<dyn FnOnce() + Send>;

/// The pool.
pub struct Workers {
    jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts one worker per core (at least two).
    pub fn start() -> std::io::Result<Workers> {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        let (jobs, rx) = unbounded::<Job>();
        let mut threads = Vec::with_capacity(n);
        for _ in 0..n {
            let rx = rx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("worker".into())
                    .spawn(move || {
                        for job in rx.iter() {
                            job();
                        }
                    })?,
            );
        }
        Ok(Workers {
            jobs: Some(jobs),
            threads,
        })
    }

    /// Runs `f` on a worker and waits for its result (None if the pool is
    /// stopping).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = bounded(1);
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs.as_ref()?.send(job).ok()?;
        rx.recv().ok()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.jobs.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
