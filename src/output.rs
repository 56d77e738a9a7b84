//! Command output on stdout and stderr for the non-daemon commands. A reader
//! that goes away (`maildird who | head -1`, `events | grep -m1`) is a quiet,
//! normal end (exit 0), never a panic; `println!` would panic on EPIPE.

use std::io::{self, Write};

use crate::error::CommandError;

/// Whether the reader of standard output is still there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    Listening,
    Gone,
}

/// Write `text` to standard output and flush it. A closed pipe is
/// `Ok(Reader::Gone)`; any other failure (a full disk, /dev/full) is an error.
pub fn print(text: &str) -> Result<Reader, CommandError> {
    write_to(&mut io::stdout().lock(), text)
}

/// `print` on any writer (tests use it with a failing one).
pub fn write_to(out: &mut impl Write, text: &str) -> Result<Reader, CommandError> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(Reader::Listening),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(Reader::Gone),
        Err(e) => Err(CommandError::Runtime(format!(
            "writing to standard output: {e}"
        ))),
    }
}

/// One line to standard error (warnings, notes); a closed stderr is ignored.
pub fn note(line: &str) {
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Failing(io::ErrorKind);

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(self.0))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_is_a_normal_end_other_errors_are_not() {
        let mut buf = Vec::new();
        assert_eq!(write_to(&mut buf, "a\n").unwrap(), Reader::Listening);
        assert_eq!(buf, b"a\n");
        let gone = write_to(&mut Failing(io::ErrorKind::BrokenPipe), "a\n");
        assert_eq!(gone.unwrap(), Reader::Gone);
        let full = write_to(&mut Failing(io::ErrorKind::StorageFull), "a\n");
        let e = full.unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().contains("standard output"), "{e}");
    }
}
