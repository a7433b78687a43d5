//! Circuit breakers per provider (SPEC §16): a provider that keeps failing is passed over
//! once its breaker opens, probed once after the cooldown, and back in the rotation when a
//! probe succeeds. The gateway runs on a manual clock, so cooldowns pass without sleeping.

use std::sync::Arc;

use cortex_domain::clock::{Clock, ManualClock, SystemClock};
use cortex_testkit::{FakeUpstream, TestServer};

use crate::{all_scopes_key, post_chat};

/// Longer than the passive demotion after a failure (10 s), shorter than the cooldown (30 s).
const STEP_MILLIS: i64 = 10_001;

#[tokio::test]
async fn a_failing_provider_is_passed_over_once_its_breaker_opens_and_probed_after_the_cooldown() {
    let bad = FakeUpstream::start().await;
    bad.set_fail_status(500);
    let good = FakeUpstream::start().await;
    let clock = Arc::new(ManualClock::new(SystemClock.now_millis()));
    let server = TestServer::builder()
        .clock(clock.clone())
        .provider("bad", &bad.base_url(), None)
        .provider("good", &good.base_url(), None)
        .model("llama", &["bad", "good"], 0.0, 0.0)
        .start()
        .await;
    let key = all_scopes_key(&server).await;
    let step = || async {
        let response = post_chat(&server, &key, "llama", false).await;
        assert_eq!(
            response.status(),
            200,
            "the good provider serves every request"
        );
        clock.advance_millis(STEP_MILLIS);
    };

    // Round robin puts the bad provider first every other request; each time it fails and the
    // request moves on. The fifth consecutive failure opens its breaker.
    for _ in 0..20 {
        if bad.received().len() == 5 {
            break;
        }
        step().await;
    }
    assert_eq!(bad.received().len(), 5);
    // Open: passed over for the cooldown, though the rotation would put it first again and
    // the passive demotion has run out.
    step().await;
    step().await;
    assert_eq!(bad.received().len(), 5, "an open breaker is passed over");
    // Half-open after 30 s: one request probes it (and fails over to the good one).
    step().await;
    assert_eq!(bad.received().len(), 6, "one probe after the cooldown");
    step().await;
    assert_eq!(bad.received().len(), 6, "the failed probe opened it again");

    // It recovers: the next probe succeeds and it is back in the rotation.
    bad.set_fail_status(0);
    clock.advance_millis(30_000);
    step().await;
    assert_eq!(bad.received().len(), 7, "the probe");
    for _ in 0..4 {
        step().await;
    }
    assert_eq!(
        bad.received().len(),
        9,
        "back in the round robin: every other request"
    );
    server.stop().await;
}
