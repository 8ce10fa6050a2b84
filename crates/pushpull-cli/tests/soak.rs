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
    assert_eq!((count("duplicates"), count("losses"), count("subscriptions ended")), (0, 0, 0));
    for transport in TRANSPORTS {
        // A message a failover lost, that a reader had, is read again at its offset (told by
        // a gap): a reader may get more deliveries than there are messages, never fewer.
        assert!(
            delivered(&table, transport) >= count("messages published"),
            "{transport}: {table}"
        );
    }
}
