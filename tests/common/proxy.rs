//! A TCP proxy on loopback that a test can cut, stall and restore, placed
//! between a store and its real server.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward bytes both ways.
    Pass,
    /// Close every connection and refuse new ones at once.
    Cut,
    /// Accept connections but forward nothing.
    Stall,
}

pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    pipes: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, watch) = watch::channel(Mode::Pass);
        let pipes: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let pipes = pipes.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    if *watch.borrow() == Mode::Cut {
                        drop(client);
                        continue;
                    }
                    let watch = watch.clone();
                    let pipe = tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        tokio::join!(pump(cr, sw, watch.clone()), pump(sr, cw, watch));
                    });
                    if let Ok(mut pipes) = pipes.lock() {
                        pipes.retain(|p| !p.is_finished());
                        pipes.push(pipe);
                    }
                }
            })
        };
        Proxy {
            addr,
            mode,
            pipes,
            accept,
        }
    }

    pub fn set(&self, mode: Mode) {
        let _ = self.mode.send(mode);
        if mode == Mode::Cut {
            if let Ok(mut pipes) = self.pipes.lock() {
                for pipe in pipes.drain(..) {
                    pipe.abort();
                }
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.set(Mode::Cut);
    }
}

/// Copies one direction, holding bytes back while stalled.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        loop {
            let current = *mode.borrow_and_update();
            match current {
                Mode::Pass => break,
                Mode::Cut => return,
                Mode::Stall => {
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
