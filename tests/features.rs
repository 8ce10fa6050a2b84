//! What a build without a cargo feature says when a config asks for it: an error naming the
//! feature, not "unknown field". `scripts/check-features` runs this file with each feature
//! alone, where the `cfg(not(…))` cases are the ones that run.

use pushpull::ServerConfig;

#[test]
fn auth_is_read_or_named() {
    let result = ServerConfig::from_toml(
        "[[auth.keys]]\nalgorithm = \"HS256\"\nsecret = \"a shared secret of at least thirty-two bytes\"\n",
    );
    if cfg!(feature = "auth") {
        result.unwrap();
    } else {
        let error = result.unwrap_err();
        assert!(error.message().contains("cargo feature \"auth\""), "{error}");
        // From the environment too.
        let error =
            ServerConfig::load(None, [("PUSHPULL_AUTH__ISSUER".into(), "x".into())]).unwrap_err();
        assert!(error.message().contains("cargo feature \"auth\""), "{error}");
    }
}

#[test]
fn the_demo_is_served_or_named() {
    let result = ServerConfig::from_toml("[http]\ndemo = \"on\"\n");
    if cfg!(feature = "demo") {
        result.unwrap();
    } else {
        let error = result.unwrap_err();
        assert!(error.message().contains("cargo feature \"demo\""), "{error}");
    }
    // `auto` and `off` need nothing.
    ServerConfig::from_toml("[http]\ndemo = \"auto\"\n").unwrap();
}
