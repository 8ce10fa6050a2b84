//! The bounded soak under faults, short: `pushpull bench soak` runs subscribers over every
//! transport (webhooks included) through a proxy that kills, refuses, delays and answers 503 at
//! random while publishers write. It exits non-zero on any loss, duplicate or ended
//! subscription; the counts it prints are checked here too.

use std::process::Command;

/// Runs `pushpull bench soak ARGS`, which must succeed; its table, and the count of a row.
fn soak(args: &[&str]) -> (String, impl Fn(&str) -> u64) {
    let output = Command::new(env!("CARGO_BIN_EXE_pushpull"))
        .args(["bench", "soak"])
        .args(args)
        .output()
        .expect("run pushpull bench soak");
    let table = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the soak failed:\n{table}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows = table.clone();
    let count = move |what: &str| -> u64 {
        rows.lines()
            .find(|l| l.starts_with(&format!("| {what} |")))
            .and_then(|l| l.split('|').nth(2))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no row {what:?} in\n{rows}"))
    };
    (table, count)
}

/// The deliveries of each transport's first subscriber.
fn delivered(table: &str, transport: &str) -> u64 {
    let row = table
        .lines()
        .find(|l| l.starts_with(&format!("| {transport}#0 |")))
        .unwrap_or_else(|| panic!("no row for {transport} in\n{table}"));
    row.split('|').nth(2).unwrap().trim().parse().unwrap()
}

const TRANSPORTS: [&str; 6] = ["sse", "stream", "longpoll", "poll", "ws", "webhook"];

#[test]
fn every_transport_survives_faults_without_loss_or_duplicate() {
    let (table, count) = soak(&["--minutes", "0.4", "--per-transport", "1"]);
    assert!(count("messages published") > 100, "{table}");
    let faults = ["kills (every live connection cut)", "refusal spells", "503 spells"]
        .iter()
        .map(|what| count(what))
        .sum::<u64>();
    assert!(faults > 5, "faults were injected: {table}");
    assert_eq!((count("duplicates"), count("losses"), count("subscriptions ended")), (0, 0, 0));
    for transport in TRANSPORTS {
        assert_eq!(
            delivered(&table, transport),
            count("messages published"),
            "{transport} got every message: {table}"
        );
    }
}

#[test]
fn every_transport_survives_masters_of_a_redis_cluster_failing_over() {
    // Six redis-server processes, three masters with a replica each: among the faults, a
    // master is killed (its replica takes over) and comes back as a replica.
    let (table, count) =
        soak(&["--minutes", "0.4", "--per-transport", "1", "--redis", "--cluster"]);
    assert!(count("masters killed") >= 1, "a master failed over: {table}");
    assert!(count("messages published") > 100, "{table}");
    // No silent hole and no repeat: what a failover lost is told to each reader by a gap. A
    // reader may end with fewer deliveries than acknowledged publishes: a poller that had not
    // yet read a message Redis then lost never gets it (its gap says so; one run saw short
    // polling at 2,409 of 2,431 with no loss counted), while one that had read it reads that
    // offset again (more deliveries than messages).
    assert_eq!((count("duplicates"), count("losses"), count("subscriptions ended")), (0, 0, 0));
    for transport in TRANSPORTS {
        assert!(delivered(&table, transport) > 0, "{transport}: {table}");
    }
}
