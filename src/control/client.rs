//! The client side of the control socket: `maildird who`, `kick`, `events`.

use std::io;
use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::Event;
use super::server::{Reply, Request};

type Conn = (Lines<BufReader<OwnedReadHalf>>, OwnedWriteHalf);

/// Connect and send one request. The write half is returned and must stay open:
/// for `events` the server streams until the client closes.
async fn connect(path: &Path, request: &Request) -> io::Result<Conn> {
    let stream = UnixStream::connect(path).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "control socket {}: {e} (is the daemon running?)",
                path.display()
            ),
        )
    })?;
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_string(request).map_err(io::Error::other)?;
    line.push('\n');
    w.write_all(line.as_bytes()).await?;
    Ok((BufReader::new(r).lines(), w))
}

/// Send `who` or `kick` and read the one reply line.
pub async fn request(path: &Path, request: &Request) -> io::Result<Reply> {
    let (mut lines, _w) = connect(path, request).await?;
    let line = lines
        .next_line()
        .await?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no reply"))?;
    serde_json::from_str(&line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// A stream of events.
pub struct Events {
    lines: Lines<BufReader<OwnedReadHalf>>,
    _w: OwnedWriteHalf,
}

impl Events {
    /// The next event; None when the daemon closed the stream.
    pub async fn next(&mut self) -> Option<io::Result<Event>> {
        match self.lines.next_line().await {
            Ok(Some(l)) => Some(serde_json::from_str::<Event>(&l).map_err(|_| {
                match serde_json::from_str::<Reply>(&l) {
                    Ok(Reply::Error(e)) => io::Error::new(io::ErrorKind::PermissionDenied, e),
                    _ => {
                        io::Error::new(io::ErrorKind::InvalidData, format!("bad event line {l:?}"))
                    }
                }
            })),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

pub async fn events(path: &Path) -> io::Result<Events> {
    let (mut lines, w) = connect(path, &Request::Events).await?;
    // Wait until the daemon has subscribed, so no event after this call is missed.
    let first = lines
        .next_line()
        .await?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no reply"))?;
    match serde_json::from_str::<Reply>(&first) {
        Ok(Reply::Subscribed) => Ok(Events { lines, _w: w }),
        Ok(Reply::Error(e)) => Err(io::Error::new(io::ErrorKind::PermissionDenied, e)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected reply {first:?}"),
        )),
    }
}
