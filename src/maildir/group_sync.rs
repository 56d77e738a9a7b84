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
    /// The last fsync that failed, and how: callers it covered get the
    /// error (a failed fsync says nothing about their links).
    failed: Option<(u64, io::ErrorKind, String)>,
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
                    Some((n, kind, msg)) if *n >= need => Err(io::Error::new(*kind, msg.clone())),
                    _ => Ok(()),
                };
            }
            if !st.running {
                st.running = true;
                st.started += 1;
                let mine = st.started;
                drop(st);
                let r = fsync.take().map_or(Ok(()), |f| f());
                st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                st.running = false;
                st.finished = mine;
                if let Err(e) = &r {
                    st.failed = Some((mine, e.kind(), e.to_string()));
                }
                self.done.notify_all();
                // `mine` began after this call: it covers the caller.
                return r;
            }
            st = self.done.wait(st).unwrap_or_else(|p| p.into_inner());
        }
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
