//! Password verifiers: what the server stores instead of passwords.
//!
//! A verifier is an Argon2id hash in PHC string form
//! (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`), with a fresh random
//! salt per account and OWASP's parameters by default: 19 MiB of memory,
//! 2 iterations, 1 lane. Checking a login against a username that does not
//! exist runs the same computation against a dummy verifier, so neither the
//! reply nor its timing tells whether the account exists.

use std::fmt;

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use crossbeam_channel::{bounded, unbounded, Sender};

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordCost {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
}

impl PasswordCost {
    /// OWASP's recommendation: 19 MiB, 2 iterations, 1 lane.
    pub const OWASP: PasswordCost = PasswordCost {
        memory_kib: 19 * 1024,
        iterations: 2,
    };

    /// A cheap setting for test suites that create many accounts. Still real
    /// Argon2id, just weak: never use it for a server people rely on.
    pub const TESTING: PasswordCost = PasswordCost {
        memory_kib: 64,
        iterations: 1,
    };
}

impl Default for PasswordCost {
    fn default() -> Self {
        PasswordCost::OWASP
    }
}

/// Hashing a new password failed (bad parameters or no randomness).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordError(pub String);

impl fmt::Display for PasswordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "password hashing failed: {}", self.0)
    }
}

impl std::error::Error for PasswordError {}

/// Hashes and checks passwords at one cost, on a small pool of threads.
///
/// Argon2id needs 19 MiB per hash. Running hashes only on a few dedicated
/// threads caps how many run at once (so a crowd of logins cannot exhaust
/// memory or CPU) and keeps that memory in a few threads' allocators rather
/// than in every connection thread's.
pub struct Passwords {
    jobs: Sender<Job>,
}

enum Job {
    Hash(String, Sender<Result<String, PasswordError>>),
    Check(Option<String>, String, Sender<bool>),
}

/// The hashing work itself, as done by one pool thread.
struct Hasher {
    argon: Argon2<'static>,
    /// Checked against when the account does not exist.
    dummy: String,
}

impl Hasher {
    fn hash(&self, password: &str) -> Result<String, PasswordError> {
        self.argon
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| PasswordError(e.to_string()))
    }

    fn check(&self, verifier: Option<&str>, password: &str) -> bool {
        let target = verifier.unwrap_or(&self.dummy);
        let ok = self
            .argon
            .verify_password(password.as_bytes(), target)
            .is_ok();
        ok && verifier.is_some()
    }
}

impl Passwords {
    /// A hasher at `cost`, with one pool thread per core (at least two).
    pub fn new(cost: PasswordCost) -> Result<Self, PasswordError> {
        let params = Params::new(cost.memory_kib, cost.iterations, 1, None)
            .map_err(|e| PasswordError(e.to_string()))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let dummy = argon
            .hash_password(b"no such account")
            .map_err(|e| PasswordError(e.to_string()))?
            .to_string();
        let hasher = std::sync::Arc::new(Hasher { argon, dummy });
        let (jobs, queue) = unbounded::<Job>();
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        for _ in 0..threads {
            let (hasher, queue) = (std::sync::Arc::clone(&hasher), queue.clone());
            std::thread::Builder::new()
                .name("argon2".into())
                .spawn(move || {
                    for job in queue.iter() {
                        match job {
                            Job::Hash(pw, done) => {
                                let _ = done.send(hasher.hash(&pw));
                            }
                            Job::Check(verifier, pw, done) => {
                                let _ = done.send(hasher.check(verifier.as_deref(), &pw));
                            }
                        }
                    }
                })
                .map_err(|e| PasswordError(e.to_string()))?;
        }
        Ok(Passwords { jobs })
    }

    /// A verifier for a new password, with a fresh salt.
    pub fn hash(&self, password: &str) -> Result<String, PasswordError> {
        let (done, result) = bounded(1);
        self.jobs
            .send(Job::Hash(password.to_string(), done))
            .map_err(|_| PasswordError("hashing threads stopped".into()))?;
        result
            .recv()
            .map_err(|_| PasswordError("hashing threads stopped".into()))?
    }

    /// Whether `password` matches `verifier`; with no verifier (no such
    /// account) it does the same work and answers false. The comparison
    /// inside is constant-time. A verifier that does not parse never matches.
    pub fn check(&self, verifier: Option<&str>, password: &str) -> bool {
        let (done, result) = bounded(1);
        let job = Job::Check(verifier.map(str::to_string), password.to_string(), done);
        self.jobs.send(job).is_ok() && result.recv().unwrap_or(false)
    }
}

impl fmt::Debug for Passwords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passwords(argon2id)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_right_password() {
        let p = Passwords::new(PasswordCost::TESTING).unwrap();
        let v = p.hash("hunter2").unwrap();
        assert!(v.starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        assert!(!v.contains("hunter2"));
        assert!(p.check(Some(&v), "hunter2"));
        assert!(!p.check(Some(&v), "hunter3"));
        assert!(!p.check(None, "hunter2"));
        assert!(!p.check(None, "no such account"), "the dummy never logs in");
        assert!(!p.check(Some("garbage"), "x"));
        assert_ne!(p.hash("x").unwrap(), p.hash("x").unwrap(), "fresh salts");
    }

    #[test]
    fn default_cost_is_owasp() {
        let p = Passwords::new(PasswordCost::default()).unwrap();
        let v = p.hash("pw").unwrap();
        assert!(v.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{v}");
        assert!(p.check(Some(&v), "pw"));
    }
}
