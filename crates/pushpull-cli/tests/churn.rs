//! The churn bench, short: clients come and go on every transport (cleanly, and with their
//! connections cut) after a spike of idle streams, and the server's open files, tasks and
//! connections must come back to their baseline with no message missed.

use std::process::Command;

#[test]
fn clients_coming_and_going_leave_nothing_behind() {
    let output = Command::new(env!("CARGO_BIN_EXE_pushpull"))
        .args(["bench", "churn", "--minutes", "0.15", "--rate", "20", "--session-seconds", "1"])
        .args(["--spike", "300", "--warmup", "3", "--quiet", "3", "--json"])
        .output()
        .expect("run pushpull bench churn");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the churn failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON results");
    let number = |path: &[&str]| -> u64 {
        path.iter().fold(&result, |value, key| &value[*key]).as_u64().unwrap_or_else(|| {
            panic!("no {path:?} in {result}");
        })
    };
    assert!(number(&["sessions"]) >= 150, "{result}");
    assert!(number(&["cut"]) >= 70, "half the sessions are cut: {result}");
    assert!(number(&["deliveries"]) > 0, "{result}");
    assert_eq!((number(&["losses"]), number(&["gaps"]), number(&["failures"])), (0, 0, 0));
    // The spike and the sessions came and went.
    assert!(number(&["peak", "connections"]) >= 300, "{result}");
    assert!(number(&["after_quiet", "fds"]) <= number(&["baseline", "fds"]) + 2, "{result}");
    assert!(number(&["after_quiet", "tasks"]) <= number(&["baseline", "tasks"]) + 2, "{result}");
    assert!(number(&["after_quiet", "connections"]) <= number(&["baseline", "connections"]));
    assert_eq!(result["back_at_baseline"], true, "{result}");
}
