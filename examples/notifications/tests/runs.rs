//! The example runs as its documentation says: the notifier process is called for every order,
//! in order, once each.

use std::process::Command;

#[test]
fn the_notifier_process_is_called_for_every_order() {
    let output = Command::new(env!("CARGO_BIN_EXE_notifications")).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(text.contains("[shop] notifier registered, waiting for 3 orders"), "{text}");
    let notified: Vec<&str> =
        text.lines().filter(|l| l.starts_with("[notifier] order.paid")).collect();
    assert_eq!(
        notified,
        [
            r#"[notifier] order.paid #1: {"order":"1001","item":"a kettle","total_eur":39}"#,
            r#"[notifier] order.paid #2: {"order":"1002","item":"two mugs","total_eur":18}"#,
            r#"[notifier] order.paid #3: {"order":"1003","item":"a teapot","total_eur":45}"#,
        ],
        "{text}"
    );
}
