//! The example runs as its documentation says: ten prices followed over the network, then the
//! history pulled, and it stops by itself.

use std::process::Command;

#[test]
fn the_ticker_follows_ten_prices_and_stops() {
    let output = Command::new(env!("CARGO_BIN_EXE_ticker")).output().expect("run the example");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}\n{}", String::from_utf8_lossy(&output.stderr));
    for offset in 1..=10 {
        assert!(text.contains(&format!("(offset {offset})")), "price {offset} missing:\n{text}");
    }
    assert!(text.contains("history holds 10 prices"), "{text}");
}
