//! The filesystem's durable-delivery limit, for `bench/run.sh`: N writer
//! threads each loop over what a Maildir delivery must do to be durable —
//! create a file in `tmp/` (O_EXCL), write the message, fsync it, link it
//! into `new/`, fsync `new/`, unlink the `tmp/` name — for a fixed time, and
//! the total rate is printed (`ops_per_s N`). No server, no protocol: the
//! ceiling a mail server's delivery rate is compared with.
//!
//! Usage: fsprobe DIR WRITERS SIZE SECONDS   (DIR gets tmp/ and new/)

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, writers, size, secs] = args.as_slice() else {
        eprintln!("usage: fsprobe DIR WRITERS SIZE SECONDS");
        std::process::exit(2);
    };
    let dir = PathBuf::from(dir);
    let writers: usize = writers.parse().expect("WRITERS");
    let size: usize = size.parse().expect("SIZE");
    let secs: f64 = secs.parse().expect("SECONDS");
    fs::create_dir_all(dir.join("tmp"))?;
    fs::create_dir_all(dir.join("new"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let body = vec![b'x'; size];
    let started = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let (dir, stop, done, body) = (dir.clone(), stop.clone(), done.clone(), body.clone());
            std::thread::spawn(move || -> std::io::Result<()> {
                let new_dir = File::open(dir.join("new"))?;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!(
                        "{}.P{}W{w}I{i}.probe",
                        std::process::id(),
                        started.elapsed().as_nanos()
                    );
                    let tmp = dir.join("tmp").join(&name);
                    let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
                    f.write_all(&body)?;
                    f.sync_all()?;
                    fs::hard_link(&tmp, dir.join("new").join(&name))?;
                    new_dir.sync_all()?;
                    fs::remove_file(&tmp)?;
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("writer")?;
    }
    let took = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!("ops {n}");
    println!("ops_per_s {:.1}", n as f64 / took);
    Ok(())
}
