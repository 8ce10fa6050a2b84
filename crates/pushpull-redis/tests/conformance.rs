//! The Redis broker against the whole conformance suite, on a real redis-server per case.

pushpull_testkit::conformance!(pushpull_testkit::redis::RedisHarness);
