//! A loopback TCP proxy whose connections a test can cut, to see what a client does when the
//! network drops its connection in the middle of a session while new connections still work.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Forwards every connection made to [`CuttableProxy::address`] to a target address.
pub struct CuttableProxy {
    address: SocketAddr,
    /// Both ends of every connection forwarded so far (ended ones are harmless to shut down).
    open: Arc<Mutex<Vec<TcpStream>>>,
    stopped: Arc<AtomicBool>,
}

impl CuttableProxy {
    /// Starts forwarding from a free loopback port to `target`.
    pub fn start(target: SocketAddr) -> CuttableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy's port");
        let address = listener.local_addr().expect("the proxy's address");
        let open = Arc::new(Mutex::new(Vec::new()));
        let stopped = Arc::new(AtomicBool::new(false));
        let (accepted, stop) = (Arc::clone(&open), Arc::clone(&stopped));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(upstream) = TcpStream::connect(target) else {
                    continue;
                };
                let ends = [&client, &upstream].map(|end| end.try_clone().expect("clone a socket"));
                accepted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(ends);
                let (client_reader, upstream_reader) = (
                    client.try_clone().expect("clone a socket"),
                    upstream.try_clone().expect("clone a socket"),
                );
                std::thread::spawn(move || pump(client_reader, upstream));
                std::thread::spawn(move || pump(upstream_reader, client));
            }
        });
        CuttableProxy {
            address,
            open,
            stopped,
        }
    }

    /// Where clients connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Shuts down every connection forwarded so far, both ways, as a dropped network path or a
    /// restarted load balancer would; later connections are forwarded as before.
    pub fn cut(&self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        for end in open.drain(..) {
            let _ = end.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        // Wake the accepting thread so that it sees `stopped` and ends.
        let _ = TcpStream::connect(self.address);
        self.cut();
    }
}

/// Copies `from` to `to` until either ends, then ends both directions of `to`'s peer.
pub fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_until_cut_and_forwards_new_connections_after() {
        let echo = TcpListener::bind("127.0.0.1:0").expect("bind");
        let target = echo.local_addr().expect("address");
        std::thread::spawn(move || {
            for stream in echo.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut writer = stream.try_clone().expect("clone");
                    let _ = std::io::copy(&mut &stream, &mut writer);
                });
            }
        });
        let proxy = CuttableProxy::start(target);
        let round_trip = |stream: &mut TcpStream| -> std::io::Result<[u8; 4]> {
            stream.write_all(b"ping")?;
            let mut answer = [0u8; 4];
            stream.read_exact(&mut answer)?;
            Ok(answer)
        };
        let mut first = TcpStream::connect(proxy.address()).expect("connect");
        assert_eq!(round_trip(&mut first).expect("echo"), *b"ping");
        proxy.cut();
        assert!(
            round_trip(&mut first).is_err(),
            "a cut connection still works"
        );
        let mut second = TcpStream::connect(proxy.address()).expect("connect again");
        assert_eq!(round_trip(&mut second).expect("echo"), *b"ping");
    }
}
