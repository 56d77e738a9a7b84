//! Group commit for a directory's fsync: deliveries that link into the same
//! `new/` at the same time share one fsync of it instead of queueing one
//! each. Each caller needs an fsync that *began after* its link (only that
//! one is sure to cover it): if an fsync is running it waits for it to end,
//! then either a later one covered it or it runs the next one itself, for
//! everyone who arrived meanwhile. Postfix, databases and file systems'
//! journals do the same to stay near the disk's limit under concurrency.

use std::io;
use std::sync::{Condvar, Mutex};

#[derive(Debug, Default)]
pub struct GroupSync {
    state: Mutex<State>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// fsyncs begun so far (each one's number).
    started: u64,
    /// The last fsync that ended (its number).
    finished: u64,
    running: bool,
    /// The last fsync that failed, and how (errno when there is one, so
    /// ENOSPC stays ENOSPC): callers it covered get the error (a failed
    /// fsync says nothing about their links).
    failed: Option<(u64, Option<i32>, io::ErrorKind, String)>,
}

impl GroupSync {
    /// Return once an fsync begun after this call has ended (its result),
    /// running `fsync` here when it is this caller's turn to lead.
    pub fn sync(&self, fsync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // The first fsync that will begin from now on.
        let need = st.started + 1;
        let mut fsync = Some(fsync);
        loop {
            if st.finished >= need {
                return match &st.failed {
                    Some((n, Some(errno), _, _)) if *n >= need => {
                        Err(io::Error::from_raw_os_error(*errno))
                    }
                    Some((n, None, kind, msg)) if *n >= need => {
                        Err(io::Error::new(*kind, msg.clone()))
                    }
                    _ => Ok(()),
                };
            }
            if !st.running {
                st.running = true;
                st.started += 1;
                let mine = st.started;
                drop(st);
                // Should the fsync panic, the guard still ends this round
                // (as a failure), so nobody waits for it forever.
                let mut guard = Round {
                    sync: self,
                    mine,
                    result: None,
                };
                let r = fsync.take().map_or(Ok(()), |f| f());
                guard.result = Some(match &r {
                    Ok(()) => None,
                    Err(e) => Some((e.raw_os_error(), e.kind(), e.to_string())),
                });
                drop(guard);
                // `mine` began after this call: it covers the caller.
                return r;
            }
            st = self.done.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Ends a leader's round when dropped: records the result (a panic counts
/// as a failure) and wakes the waiters.
struct Round<'a> {
    sync: &'a GroupSync,
    mine: u64,
    /// None until the fsync returned; then its error, if any.
    result: Option<Option<(Option<i32>, io::ErrorKind, String)>>,
}

impl Drop for Round<'_> {
    fn drop(&mut self) {
        let mut st = self.sync.state.lock().unwrap_or_else(|p| p.into_inner());
        st.running = false;
        st.finished = self.mine;
        let failure = match self.result.take() {
            Some(r) => r,
            None => Some((None, io::ErrorKind::Other, "fsync panicked".to_string())),
        };
        if let Some((errno, kind, msg)) = failure {
            st.failed = Some((self.mine, errno, kind, msg));
        }
        self.sync.done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    #[test]
    fn alone_it_runs_its_own_fsync() {
        let g = GroupSync::default();
        let n = AtomicU64::new(0);
        for _ in 0..3 {
            g.sync(|| {
                n.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(n.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn concurrent_callers_share_fsyncs_and_each_is_covered() {
        let g = Arc::new(GroupSync::default());
        // Each fsync records the highest "link" made before it began; each
        // caller "links" (bumps the counter) before it syncs and checks that
        // an fsync covering its link ended before it returned.
        let links = Arc::new(AtomicU64::new(0));
        let covered = Arc::new(AtomicU64::new(0));
        let fsyncs = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (g, links, covered, fsyncs) =
                    (g.clone(), links.clone(), covered.clone(), fsyncs.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let me = links.fetch_add(1, Ordering::SeqCst) + 1;
                        g.sync(|| {
                            let upto = links.load(Ordering::SeqCst);
                            std::thread::sleep(Duration::from_micros(300));
                            fsyncs.fetch_add(1, Ordering::SeqCst);
                            covered.fetch_max(upto, Ordering::SeqCst);
                            Ok(())
                        })
                        .unwrap();
                        assert!(
                            covered.load(Ordering::SeqCst) >= me,
                            "link {me} not covered"
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n = fsyncs.load(Ordering::SeqCst);
        assert!(n < 16 * 50, "no fsync was shared ({n})");
    }

    #[test]
    fn waiters_get_the_leaders_errno_and_a_panic_ends_the_round() {
        let g = Arc::new(GroupSync::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let leader = {
            let g = g.clone();
            std::thread::spawn(move || {
                g.sync(|| {
                    tx.send(()).unwrap();
                    std::thread::sleep(Duration::from_millis(100));
                    Err(io::Error::from_raw_os_error(nix::libc::ENOSPC))
                })
            })
        };
        rx.recv().unwrap();
        // Arrives while the first fsync runs: needs the next one, which
        // this test makes fail too, with the same errno.
        // Two arrive while the first fsync runs: one leads the next round,
        // the other is covered by it and gets its errno from the state.
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || {
                    g.sync(|| {
                        std::thread::sleep(Duration::from_millis(50));
                        Err(io::Error::from_raw_os_error(nix::libc::ENOSPC))
                    })
                })
            })
            .collect();
        let e = leader.join().unwrap().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC));
        for w in waiters {
            let e = w.join().unwrap().unwrap_err();
            assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC));
        }
        // A panicking fsync: its caller panics, nobody else hangs.
        let g2 = g.clone();
        let r = std::thread::spawn(move || g2.sync(|| panic!("fsync panicked"))).join();
        assert!(r.is_err());
        g.sync(|| Ok(())).unwrap();
    }

    #[test]
    fn a_failed_fsync_fails_those_it_covered() {
        let g = GroupSync::default();
        let e = g
            .sync(|| Err(io::Error::from_raw_os_error(nix::libc::EIO)))
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(nix::libc::EIO));
        // The next caller needs a new fsync; this one succeeds.
        g.sync(|| Ok(())).unwrap();
    }
}
