//! A message under the message filters: its header section parsed into
//! fields in memory (bounded), its body left in the staged scratch file and
//! streamed from there. Filters edit the fields; the body is read, never
//! held. The stored form uses LF line ends; milters get CRLF.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use crate::checks::header::names_us;

/// The most header bytes held for the filters (fields and edits together).
/// A message whose header section is bigger is refused (`552 5.3.4`): no
/// mail from a real sender comes close.
pub const MAX_HEADER: usize = 1024 * 1024;

/// One header field: its name and everything after the colon up to (not
/// including) its last line end; continuation lines keep their LF and
/// leading blank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub value: Vec<u8>,
}

impl Field {
    /// The name without the blanks old syntax allows before the colon.
    pub fn key(&self) -> &str {
        self.name.trim_end_matches([' ', '\t'])
    }

    /// Is this field called `name` (any case)?
    pub fn is(&self, name: &str) -> bool {
        self.key().eq_ignore_ascii_case(name)
    }

    /// The whole field, stored form, without its last line end.
    pub fn bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.size());
        v.extend_from_slice(self.name.as_bytes());
        v.push(b':');
        v.extend_from_slice(&self.value);
        v
    }

    fn size(&self) -> usize {
        self.name.len() + self.value.len() + 2
    }

    /// The value as a milter expects it: leading blanks dropped (unless it
    /// asked for them), line ends as CRLF inside folded values.
    pub fn milter_value(&self, leading_space: bool) -> Vec<u8> {
        let v = if leading_space {
            &self.value[..]
        } else {
            let start = self
                .value
                .iter()
                .position(|&b| b != b' ' && b != b'\t')
                .unwrap_or(self.value.len());
            &self.value[start..]
        };
        let mut out = Vec::with_capacity(v.len());
        crate::checks::header::extend_crlf(&mut out, v);
        out
    }
}

/// The header section was too big to hold for the filters.
#[derive(Debug)]
pub struct HeaderTooBig;

/// A header edit, as a milter asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Append a field at the end of the header section.
    Add { name: String, value: Vec<u8> },
    /// Insert a field before the `index`th field (0: at the top).
    Insert {
        index: u32,
        name: String,
        value: Vec<u8>,
    },
    /// Replace the `index`th (from 1) field called `name`; an empty value
    /// deletes it; past the last one it is added.
    Change {
        index: u32,
        name: String,
        value: Vec<u8>,
    },
}

/// A message: fields in memory, the body in `file` from `body_start`.
#[derive(Debug)]
pub struct Message {
    pub fields: Vec<Field>,
    held: usize,
    /// There was an empty line between header and body.
    separator: bool,
    file: File,
    body_start: u64,
    len: u64,
}

impl Message {
    /// Read the header section of the staged message in `file` (blocking),
    /// leaving out any `Authentication-Results:` that claims `authserv_id`
    /// (RFC 8601 §5), so that only what we and the filters add is there.
    pub fn read(file: File, authserv_id: &str) -> io::Result<Result<Message, HeaderTooBig>> {
        let len = file.metadata()?.len();
        let mut r = BufReader::with_capacity(64 * 1024, file);
        r.seek(SeekFrom::Start(0))?;
        let mut fields: Vec<Field> = Vec::new();
        let mut held = 0usize;
        let mut consumed = 0u64;
        let mut separator = false;
        let mut line = Vec::new();
        loop {
            line.clear();
            // Bounded: a line longer than what may be held ends the read.
            let limit = MAX_HEADER - held.min(MAX_HEADER) + 2;
            let n = (&mut r).take(limit as u64).read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            if n == limit && line.last() != Some(&b'\n') {
                return Ok(Err(HeaderTooBig));
            }
            if line == b"\n" {
                separator = true;
                consumed += 1;
                break;
            }
            let body = line.strip_suffix(b"\n").unwrap_or(&line);
            if matches!(line.first(), Some(b' ' | b'\t')) {
                match fields.last_mut() {
                    Some(f) => {
                        f.value.push(b'\n');
                        f.value.extend_from_slice(body);
                    }
                    // A continuation with nothing to continue: the body.
                    None => break,
                }
            } else {
                let Some(colon) = body.iter().position(|&b| b == b':') else {
                    // Not a field: the body starts here (no empty line).
                    break;
                };
                let name = &body[..colon];
                let key = name.trim_ascii_end();
                if key.is_empty() || !key.iter().all(|&b| (33..=126).contains(&b)) {
                    break;
                }
                fields.push(Field {
                    name: String::from_utf8_lossy(name).into_owned(),
                    value: body[colon + 1..].to_vec(),
                });
            }
            held += n;
            if held > MAX_HEADER {
                return Ok(Err(HeaderTooBig));
            }
            consumed += n as u64;
        }
        fields.retain(|f| !(f.is("authentication-results") && names_us(&f.bytes(), authserv_id)));
        Ok(Ok(Message {
            fields,
            held,
            separator,
            file: r.into_inner(),
            body_start: consumed,
            len,
        }))
    }

    /// The body's size in bytes (stored form).
    pub fn body_len(&self) -> u64 {
        self.len - self.body_start
    }

    /// Apply one edit. Values may come with CRLF or LF; they are stored with
    /// LF, and a line that does not start with a blank gets one, so an edit
    /// can never smuggle in a field of its own.
    pub fn apply(&mut self, edit: Edit) -> Result<(), HeaderTooBig> {
        let (name, value) = match &edit {
            Edit::Add { name, value }
            | Edit::Insert { name, value, .. }
            | Edit::Change { name, value, .. } => (name.clone(), stored_value(value)),
        };
        let field = Field { name, value };
        if self.held + field.size() > MAX_HEADER {
            return Err(HeaderTooBig);
        }
        match edit {
            Edit::Add { .. } => {
                self.held += field.size();
                self.fields.push(field);
            }
            Edit::Insert { index, .. } => {
                let at = (index as usize).min(self.fields.len());
                self.held += field.size();
                self.fields.insert(at, field);
            }
            Edit::Change { index, .. } => {
                let at = self
                    .fields
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| f.is(&field.name))
                    .nth((index as usize).saturating_sub(1))
                    .map(|(i, _)| i);
                let delete = field.value.iter().all(|&b| b == b' ' || b == b'\t');
                match (at, delete) {
                    (Some(i), true) => {
                        let old = self.fields.remove(i);
                        self.held -= old.size().min(self.held);
                    }
                    (Some(i), false) => {
                        let old = std::mem::replace(&mut self.fields[i], field.clone());
                        self.held = self.held - old.size().min(self.held) + field.size();
                    }
                    (None, true) => {}
                    (None, false) => {
                        self.held += field.size();
                        self.fields.push(field);
                    }
                }
            }
        }
        Ok(())
    }

    /// Apply `edits` in order, all or none (none when they would take the
    /// header section over `MAX_HEADER`).
    pub fn apply_all(&mut self, edits: Vec<Edit>) -> Result<(), HeaderTooBig> {
        let saved = (self.fields.clone(), self.held);
        for e in edits {
            if self.apply(e).is_err() {
                (self.fields, self.held) = saved;
                return Err(HeaderTooBig);
            }
        }
        Ok(())
    }

    /// The header section in stored form (LF), with the empty line.
    pub fn header_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.held + 1);
        for f in &self.fields {
            out.extend_from_slice(f.name.as_bytes());
            out.push(b':');
            out.extend_from_slice(&f.value);
            out.push(b'\n');
        }
        if self.separator {
            out.push(b'\n');
        }
        out
    }

    /// Read body bytes at `offset` (from the body's start) into `buf`
    /// (blocking); 0 at the end.
    pub fn read_body(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.body_len().saturating_sub(offset);
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        match buf.get_mut(..want) {
            Some(b) if !b.is_empty() => self.file.read_at(b, self.body_start + offset),
            _ => Ok(0),
        }
    }

    /// Write the whole message (stored form) to `w` (blocking), the body
    /// copied in blocks.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&self.header_bytes())?;
        copy_range(&self.file, self.body_start, self.len, w)
    }

    /// The whole message as a reader of its own (the header section copied,
    /// the body through a second handle on the file): for a writer thread
    /// that must not borrow the message.
    pub fn source(&self) -> io::Result<Source> {
        Ok(Source {
            header: self.header_bytes(),
            file: self.file.try_clone()?,
            start: self.body_start,
            len: self.len,
        })
    }
}

/// A message to write out on another thread (see `Message::source`).
#[derive(Debug)]
pub struct Source {
    header: Vec<u8>,
    file: File,
    start: u64,
    len: u64,
}

impl Source {
    /// Write it all to `w` (blocking).
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&self.header)?;
        copy_range(&self.file, self.start, self.len, w)
    }
}

/// Copy bytes `start..end` of `file` to `w` in 64 KiB blocks (positioned
/// reads: the file's offset is not used, so handles may share it).
fn copy_range(file: &File, start: u64, end: u64, w: &mut impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = start;
    while off < end {
        let want = buf
            .len()
            .min(usize::try_from(end - off).unwrap_or(usize::MAX));
        let n = file.read_at(buf.get_mut(..want).unwrap_or_default(), off)?;
        if n == 0 {
            break;
        }
        w.write_all(buf.get(..n).unwrap_or_default())?;
        off += n as u64;
    }
    Ok(())
}

/// A value from a milter in stored form: lines split at CRLF, LF or a lone
/// CR and joined with LF; NULs dropped; blank lines dropped (some readers
/// end the header at a line of blanks); every continuation line starting
/// with a blank, so an edit can never start a field of its own; one space
/// after the colon unless the value starts with a blank.
fn stored_value(v: &[u8]) -> Vec<u8> {
    let v: Vec<u8> = v.iter().copied().filter(|&b| b != 0).collect();
    let mut out = Vec::with_capacity(v.len() + 2);
    let lines = v
        .split(|&b| b == b'\n' || b == b'\r')
        .enumerate()
        .filter(|(i, l)| *i == 0 || l.iter().any(|&b| b != b' ' && b != b'\t'));
    for (i, line) in lines {
        if i == 0 {
            if !matches!(line.first(), Some(b' ' | b'\t') | None) {
                out.push(b' ');
            }
        } else {
            out.push(b'\n');
            if !matches!(line.first(), Some(b' ' | b'\t')) {
                out.push(b'\t');
            }
        }
        out.extend_from_slice(line);
    }
    while matches!(out.last(), Some(b' ' | b'\t')) && out.len() > 1 {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &[u8]) -> Message {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(text).unwrap();
        Message::read(f, "mx.example.org").unwrap().unwrap()
    }

    fn whole(m: &Message) -> String {
        let mut v = Vec::new();
        m.write_to(&mut v).unwrap();
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn parses_fields_and_streams_the_body() {
        let m = message(b"From: a@b\nSubject: one\n two\nX:y\n\nbody\nline\n");
        assert_eq!(
            m.fields,
            [
                Field {
                    name: "From".into(),
                    value: b" a@b".to_vec()
                },
                Field {
                    name: "Subject".into(),
                    value: b" one\n two".to_vec()
                },
                Field {
                    name: "X".into(),
                    value: b"y".to_vec()
                },
            ]
        );
        assert_eq!(m.body_len(), 10);
        assert_eq!(
            whole(&m),
            "From: a@b\nSubject: one\n two\nX:y\n\nbody\nline\n"
        );
        assert_eq!(m.fields[1].milter_value(false), b"one\r\n two");
        assert_eq!(m.fields[1].milter_value(true), b" one\r\n two");
        let mut buf = [0u8; 3];
        assert_eq!(m.read_body(8, &mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"e\n");
        assert_eq!(m.read_body(10, &mut buf).unwrap(), 0);
    }

    #[test]
    fn odd_shapes_round_trip() {
        for text in [
            &b""[..],
            b"no header at all\nbody\n",
            b"Subject: no body\n",
            b"\nbody only\n",
            b" continuation first\n",
        ] {
            assert_eq!(
                whole(&message(text)).as_bytes(),
                text,
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn our_forged_results_are_dropped_others_kept() {
        let m = message(
            b"Authentication-Results: mx.example.org; spf=pass\n\
              Authentication-Results:\n (c) MX.example.org.; dkim=pass\n\
              Authentication-Results: other.example; spf=fail\n\nb\n",
        );
        assert_eq!(
            whole(&m),
            "Authentication-Results: other.example; spf=fail\n\nb\n"
        );
    }

    /// Which fields are ours to drop: any spelling of the name (blanks
    /// before the colon too), never a field that only contains the name.
    #[test]
    fn results_fields_are_recognised_by_name() {
        for ours in [
            "Authentication-Results: mx.example.org; spf=pass\n",
            "authentication-results :MX.example.org (forged); dmarc=pass\n",
            "Authentication-Results:\tmx.example.org;\n",
        ] {
            assert_eq!(
                whole(&message(format!("{ours}\nb\n").as_bytes())),
                "\nb\n",
                "{ours}"
            );
        }
        for theirs in [
            "X-Authentication-Results: mx.example.org; x\n",
            "Authentication-Results-X: mx.example.org\n",
        ] {
            let text = format!("{theirs}\nb\n");
            assert_eq!(whole(&message(text.as_bytes())), text);
        }
        // A continuation line first is body, not a field.
        let text = " mx.example.org; continuation\n\nb\n";
        assert_eq!(whole(&message(text.as_bytes())), text);
    }

    #[test]
    fn edits_apply_like_sendmail() {
        let mut m = message(b"Subject: a\nX-S: 1\nX-S: 2\n\nb\n");
        m.apply(Edit::Add {
            name: "X-Spam".into(),
            value: b"yes".to_vec(),
        })
        .unwrap();
        m.apply(Edit::Insert {
            index: 0,
            name: "X-Top".into(),
            value: b" t".to_vec(),
        })
        .unwrap();
        m.apply(Edit::Change {
            index: 2,
            name: "x-s".into(),
            value: b"two\r\n folded".to_vec(),
        })
        .unwrap();
        m.apply(Edit::Change {
            index: 1,
            name: "Subject".into(),
            value: Vec::new(),
        })
        .unwrap();
        // Past the last one: added; deleting what is not there: nothing.
        m.apply(Edit::Change {
            index: 5,
            name: "X-New".into(),
            value: b"n".to_vec(),
        })
        .unwrap();
        m.apply(Edit::Change {
            index: 1,
            name: "X-None".into(),
            value: Vec::new(),
        })
        .unwrap();
        // An injected line gets a blank: it stays inside the field.
        m.apply(Edit::Add {
            name: "X-Inj".into(),
            value: b"a\nBcc: evil\r\n".to_vec(),
        })
        .unwrap();
        // Blank lines inside a value go: they could end the header.
        m.apply(Edit::Add {
            name: "X-Gap".into(),
            value: b"a\r\n\r\n \t\r\nb".to_vec(),
        })
        .unwrap();
        m.apply(Edit::Insert {
            index: 99,
            name: "X-End".into(),
            value: b"e".to_vec(),
        })
        .unwrap();
        assert_eq!(
            whole(&m),
            "X-Top: t\nX-S: 1\nx-s: two\n folded\nX-Spam: yes\nX-New: n\nX-Inj: a\n\tBcc: evil\nX-Gap: a\n\tb\nX-End: e\n\nb\n"
        );
    }

    #[test]
    fn header_is_bounded() {
        let mut text = Vec::new();
        for i in 0..20_000 {
            text.extend_from_slice(format!("X-Filler-{i}: {}\n", "x".repeat(60)).as_bytes());
        }
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&text).unwrap();
        assert!(Message::read(f, "h").unwrap().is_err());
        // One endless line too.
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&vec![b'x'; MAX_HEADER + 10]).unwrap();
        f.write_all(b": v\n\nbody").unwrap();
        assert!(Message::read(f, "h").unwrap().is_err());
        let mut m = message(b"A: b\n\n");
        let big = vec![b'v'; MAX_HEADER];
        assert!(
            m.apply(Edit::Add {
                name: "X".into(),
                value: big
            })
            .is_err()
        );
    }
}
