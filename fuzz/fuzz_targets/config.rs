//! Server and client configuration files: never a panic, only errors that name what is wrong.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    let _ = pushpull::ServerConfig::from_toml(input);
    let _ = pushpull::ClientConfig::from_toml(input);
});
