//! inetd mode and `Accept=yes` socket units: one session on stdin/stdout. When
//! stdin is a socket it is used directly (peer address known); a pipe is served
//! through tokio's stdin/stdout.

use std::net::SocketAddr;
use std::os::fd::AsFd;

use nix::sys::stat::{SFlag, fstat};

use crate::stream::BoxedIo;

/// The session stream and the peer address, if stdin is a TCP socket.
pub fn stdio_stream() -> std::io::Result<(BoxedIo, Option<SocketAddr>)> {
    let stdin = std::io::stdin();
    let is_socket = fstat(stdin.as_fd())
        .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode).contains(SFlag::S_IFSOCK));
    if is_socket {
        let fd = stdin.as_fd().try_clone_to_owned()?;
        let std_stream = std::net::TcpStream::from(fd);
        let peer = std_stream.peer_addr().ok();
        std_stream.set_nonblocking(true)?;
        let stream = tokio::net::TcpStream::from_std(std_stream)?;
        return Ok((Box::new(stream), peer));
    }
    Ok((
        Box::new(tokio::io::join(tokio::io::stdin(), tokio::io::stdout())),
        None,
    ))
}
