//! The example runs as its documentation says: three greetings over the line protocol.

use std::process::Command;

#[test]
fn three_greetings_go_over_the_line() {
    let output = Command::new(env!("CARGO_BIN_EXE_custom-transport")).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}\n{}", String::from_utf8_lossy(&output.stderr));
    for (n, word) in ["hello", "bonjour", "hallo"].iter().enumerate() {
        assert!(text.contains(&format!("-{} {word}", n + 1)), "{text}");
    }
}
