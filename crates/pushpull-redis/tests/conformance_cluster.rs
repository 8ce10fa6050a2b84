//! The Redis broker against the whole conformance suite on a real Redis Cluster (three
//! masters, three replicas), shared by the cases, each under a key prefix of its own.

pushpull_testkit::conformance!(pushpull_testkit::redis::RedisClusterHarness);
