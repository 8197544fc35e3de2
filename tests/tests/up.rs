//! `demo-app up`: the one command of the README starts the topology, and stopping it —
//! politely or not — leaves no process behind.

use std::process::Command;
use std::time::Duration;

use e2e::{Proc, bin, free_port, wait_for, wait_port};
use nix::sys::signal::Signal;

fn up_args(lb: u16, nodes: &[u16], store: u16) -> Vec<String> {
    let nodes: Vec<String> = nodes.iter().map(u16::to_string).collect();
    vec![
        "up".into(),
        "--lb-port".into(),
        lb.to_string(),
        "--node-ports".into(),
        nodes.join(","),
        "--store-port".into(),
        store.to_string(),
        "--amqp-port".into(),
        free_port().to_string(),
    ]
}

/// Pids whose parent is `parent`, read from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Fields after the parenthesised command name: state, ppid, ...
            let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
            after.split_whitespace().nth(1) == Some(&parent.to_string())
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.split_whitespace().next());
    // Gone, or a zombie waiting to be reaped: either way no longer running.
    !matches!(state, None | Some("Z") | Some("X"))
}

/// Starts `up` on free ports, waits for the whole topology and returns it with its children.
fn start_up() -> (Proc, Vec<u32>, u16) {
    let (lb, store) = (free_port(), free_port());
    let nodes = [free_port(), free_port(), free_port()];
    // The tests start several topologies at once from the same directory; they cannot all
    // lock the default AMQP data directory, and need nothing on disk.
    let env = [("STORE_AMQP_NO_PERSIST", "true")];
    let up = Proc::spawn("up", &bin("demo-app"), &up_args(lb, &nodes, store), &env);
    wait_port(lb, Duration::from_secs(30));
    let children = wait_for(
        "store, three nodes and the LB",
        Duration::from_secs(10),
        || {
            let c = children_of(up.pid());
            (c.len() == 5).then_some(c)
        },
    );
    (up, children, lb)
}

#[test]
fn up_serves_through_the_lb_and_sigterm_stops_every_child() {
    let (mut up, children, lb) = start_up();
    let body = front_page(lb);
    assert!(
        body.contains("This page was served by"),
        "the demo page: {body:.200}"
    );

    up.signal(Signal::SIGTERM);
    assert_eq!(
        up.wait_exit(Duration::from_secs(20)),
        Some(0),
        "up exits cleanly"
    );
    for pid in children {
        wait_for(
            &format!("child {pid} to be gone"),
            Duration::from_secs(5),
            || (!alive(pid)).then_some(()),
        );
    }
    // The LB stops first, the store last: every node closes its event link while the
    // broker is still there, so a stop logs no error (a broker stopping under the nodes
    // makes their AMQP client log CONNECTION_FORCED at ERROR).
    let output = up.output();
    let stopping = output
        .iter()
        .position(|l| l.contains("shutting down"))
        .expect("up logs its shutdown");
    let errors: Vec<&String> = output[stopping..]
        .iter()
        .filter(|l| l.contains("ERROR"))
        .collect();
    assert!(errors.is_empty(), "errors while stopping: {errors:#?}");
}

#[test]
fn killing_up_with_sigkill_still_takes_the_children_down() {
    let (mut up, children, _) = start_up();
    up.kill();
    for pid in children {
        wait_for(
            &format!("orphan {pid} to exit"),
            Duration::from_secs(15),
            || (!alive(pid)).then_some(()),
        );
    }
}

#[test]
fn a_taken_port_is_a_clear_error_not_a_panic() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = holder.local_addr().expect("addr").port();
    let out = Command::new(bin("demo-app"))
        .args(up_args(taken, &[free_port()], free_port()))
        .output()
        .expect("run demo-app up");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a taken port must fail the command");
    assert!(
        stderr.contains(&taken.to_string()) && stderr.contains("--lb-port"),
        "the error names the port and the flag to change: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
}

/// The LB's front page, fetched on a small runtime of its own.
fn front_page(port: u16) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let res = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("GET / through the LB");
        assert!(res.status().is_success(), "status {}", res.status());
        res.text().await.expect("body")
    })
}
