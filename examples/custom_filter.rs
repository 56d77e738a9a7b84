//! A Rust user's own transport filter: implement `Filter`, register a factory
//! under a name, and list that name in `filters = [...]`. This one swaps the
//! case of ASCII letters in both directions (a toy: it shows the shape of a
//! pass-through `AsyncRead + AsyncWrite` adapter and of reading settings).
//!
//! Run: `cargo run --example custom_filter`

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use maildird::config::Config;
use maildird::filter::{
    BoxFuture, BoxedIo, ConnMeta, Factory, Filter, FilterContext, Registry, Side,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The filter object, built once per listener from `[filter.swapcase]`.
struct SwapCase {
    /// `[filter.swapcase] enabled = true` (an example setting; false passes bytes as they are).
    enabled: bool,
}

/// The per-connection stream.
struct SwapCaseIo {
    inner: BoxedIo,
    enabled: bool,
    /// Scratch space for the transformed bytes being written.
    out: Vec<u8>,
}

/// Swap the case of an ASCII letter (when `on`); other bytes pass unchanged.
fn swap(b: u8, on: bool) -> u8 {
    if on && b.is_ascii_alphabetic() {
        b ^ 0x20
    } else {
        b
    }
}

impl AsyncRead for SwapCaseIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let only = self.enabled;
        if let Some(new) = buf.filled_mut().get_mut(before..) {
            new.iter_mut().for_each(|b| *b = swap(*b, only));
        }
        r
    }
}

impl AsyncWrite for SwapCaseIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.out.clear();
        this.out.extend(buf.iter().map(|&b| swap(b, this.enabled)));
        // One byte in, one byte out: the inner count is our count.
        Pin::new(&mut this.inner).poll_write(cx, &this.out)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Filter for SwapCase {
    fn name(&self) -> &str {
        "swapcase"
    }

    fn wrap<'a>(
        &'a self,
        io: BoxedIo,
        _meta: &'a mut ConnMeta,
    ) -> BoxFuture<'a, io::Result<BoxedIo>> {
        let enabled = self.enabled;
        Box::pin(async move {
            Ok(Box::new(SwapCaseIo {
                inner: io,
                enabled,
                out: Vec::new(),
            }) as BoxedIo)
        })
    }

    /// Every read is handed up at once (changed in place), nothing is kept
    /// back: a listener with `starttls = true` may use this filter. Leave this
    /// out (the default is `true`) when a filter buffers what it reads.
    fn may_hold_input(&self) -> bool {
        false
    }
}

/// The factory: reads `[filter.swapcase]`, errors become config errors (exit 2).
fn swapcase_factory() -> Factory {
    Arc::new(|ctx: &FilterContext<'_>| {
        let enabled = match ctx.settings.and_then(|s| s.get("enabled")) {
            None => true,
            Some(v) => v.as_bool().ok_or("enabled must be true or false")?,
        };
        Ok(Arc::new(SwapCase { enabled }) as Arc<dyn Filter>)
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The built-in filters plus ours, as a daemon embedding maildird would do.
    let mut registry = Registry::builtin();
    registry.register("swapcase", swapcase_factory());

    let config = Config::parse(
        "[[listener]]\nname = \"smtp\"\nprotocol = \"smtp\"\nbind = \"127.0.0.1:2525\"\n\
         filters = [\"zlib\", \"swapcase\"]\n\n[filter.swapcase]\nenabled = true\n",
        "example",
    )?;
    // What the daemon does at start-up for each listener (errors: exit 2) ...
    let listener = config.listener("smtp").ok_or("no listener")?;
    let server_chain = registry.build(&config, &listener.filters, Side::Server)?;
    // ... and what `maildird tunnel` does on the client side.
    let client_chain = registry.build(&config, &listener.filters, Side::Client)?;
    println!("chain: {server_chain:?}");

    let (a, b) = tokio::io::duplex(4096);
    let mut meta = ConnMeta::default();
    let mut server = server_chain.apply(Box::new(a), &mut meta).await?;
    let mut meta = ConnMeta::default();
    let mut client = client_chain.apply(Box::new(b), &mut meta).await?;

    server.write_all(b"220 Hello\r\n").await?;
    server.flush().await?;
    let mut line = [0u8; 11];
    client.read_exact(&mut line).await?;
    // Swapped twice (server out, client in): the original text again.
    assert_eq!(&line, b"220 Hello\r\n");
    println!("client read: {}", String::from_utf8_lossy(&line).trim_end());
    Ok(())
}
