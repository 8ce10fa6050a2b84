//! The example runs as its documentation says, over WebSocket and over another transport.

use std::process::Command;

#[test]
fn alice_and_bob_talk_over_ws_and_over_sse() {
    for transport in ["ws", "sse"] {
        let output = Command::new(env!("CARGO_BIN_EXE_chat")).arg(transport).output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{text}\n{}", String::from_utf8_lossy(&output.stderr));
        assert!(text.contains("[bob sees] alice: hello, anyone here?"), "{text}");
        assert!(text.contains(&format!("[alice sees] bob: hi alice, over {transport}")), "{text}");
    }
}
