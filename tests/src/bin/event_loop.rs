//! Observes: an async runtime's threads -- a tokio multi-thread runtime (three workers and its I/O driver in epoll_wait): timers finishing in an order set by their durations, a bounded channel, a loopback TCP exchange (ephemeral ports), the elapsed time. Cage: handled (threads serialised, epoll_wait tried without waiting and retried at the thread's next turn, ports the process's own). Built as a binary of this crate and run as a probe by `tests/tests/determinism.rs`.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
#[tokio::main(worker_threads = 3)]
async fn main() {
    let start = tokio::time::Instant::now();
    let mut handles = Vec::new();
    for i in 0..8u64 {
        handles.push(tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(10 * (8 - i))).await;
            (i, start.elapsed().as_micros())
        }));
    }
    let mut results = Vec::new();
    for h in handles {
        results.push(h.await.unwrap());
    }
    println!("sleeps {results:?}");
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let producer = tokio::spawn(async move {
        for i in 0..20 {
            tx.send(i).await.unwrap();
        }
    });
    let mut sum = 0;
    while let Some(v) = rx.recv().await {
        sum += v;
    }
    producer.await.unwrap();
    println!("channel sum {sum}");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, peer) = listener.accept().await.unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b).await.unwrap();
        s.write_all(b"pong!").await.unwrap();
        peer
    });
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(b"ping!").await.unwrap();
    let mut b = [0u8; 5];
    c.read_exact(&mut b).await.unwrap();
    println!("tcp {addr} peer {} reply {}", server.await.unwrap(), String::from_utf8_lossy(&b));
    println!("elapsed {:?}", start.elapsed());
}
