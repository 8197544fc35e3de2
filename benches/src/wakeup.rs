//! `bench wakeup`: the floor under every latency measured on this machine. Two threads
//! bounce one byte over loopback TCP at a steady rate, each blocking in the kernel between
//! messages, as a broker and its clients do at low load. Its tail is the time the OS (and,
//! in a VM, the hypervisor) takes to wake an idle thread, with no broker involved.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args as ClapArgs;

#[derive(ClapArgs)]
pub struct Args {
    /// Round trips per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Measured seconds.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
}

pub fn run(args: &Args) -> anyhow::Result<bool> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind a loopback port")?;
    let addr = listener.local_addr()?;
    let echo = thread::spawn(move || -> std::io::Result<()> {
        let (mut peer, _) = listener.accept()?;
        peer.set_nodelay(true)?;
        let mut byte = [0u8; 1];
        while peer.read(&mut byte)? == 1 {
            peer.write_all(&byte)?;
        }
        Ok(())
    });
    let mut conn = TcpStream::connect(addr).context("connect to the echo thread")?;
    conn.set_nodelay(true)?;
    let period = Duration::from_nanos(1_000_000_000 / args.rate.max(1));
    let count = usize::try_from(args.rate.max(1) * args.seconds.max(1)).unwrap_or(usize::MAX);
    let mut samples = Vec::with_capacity(count.min(10_000_000));
    let mut byte = [0u8; 1];
    let mut next = Instant::now();
    for _ in 0..count {
        next += period;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let sent = Instant::now();
        conn.write_all(b"x")?;
        conn.read_exact(&mut byte)?;
        samples.push(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    drop(conn);
    match echo.join() {
        Ok(result) => result.context("echo thread")?,
        Err(_) => anyhow::bail!("the echo thread panicked"),
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "scenario=wakeup rate={} samples={} p50_us={} p99_us={} p999_us={} max_us={}",
        args.rate,
        samples.len(),
        at(0.5),
        at(0.99),
        at(0.999),
        at(1.0)
    );
    Ok(true)
}
