//! The memory broker against the conformance suite.

pushpull_testkit::conformance!(pushpull_testkit::MemoryHarness);
