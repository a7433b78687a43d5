//! The supervisor with the process runtime and the fake engine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cortex_engines::{
    EngineId, EngineState, Runtimes, Supervisor, SupervisorError, SupervisorOptions, WithdrawReason,
};
use serde_json::json;

use crate::support::*;

fn supervisor(options: SupervisorOptions, events: Arc<Recorder>) -> Supervisor {
    Supervisor::new(options, events, Runtimes::default())
}

fn llama_spec(env: serde_json::Value) -> cortex_engines::EngineSpec {
    let mut body = json!({"name": "tiny", "engine": "llamacpp", "runtime": "process",
        "model": "tiny.gguf", "served_model_name": "tiny-chat", "settings": {"ctx_size": 256}});
    body["env"] = env;
    spec(body)
}

#[tokio::test]
async fn running_only_after_readiness_and_the_port_needs_the_key() {
    let models = models_dir();
    let events = recorder();
    let sup = supervisor(fast_options(models.path()), events.clone());
    let id = EngineId::from("e1");
    sup.upsert(
        id.clone(),
        llama_spec(json!({"FAKE_ENGINE_READY_DELAY_MS": "1500"})),
    )
    .unwrap();
    assert_eq!(sup.status(&id).unwrap().state, EngineState::Stopped);
    let started = Instant::now();
    sup.start(&id).unwrap();

    // Starting: the engine listens and answers 503 while it "loads"; the supervisor waits.
    let status = wait_for(
        &sup,
        &id,
        Duration::from_secs(10),
        "a listening engine",
        |s| {
            s.state == EngineState::Starting
                && sup
                    .logs(&id, 50)
                    .unwrap()
                    .iter()
                    .any(|l| l.contains("fake-engine: listening"))
        },
    )
    .await;
    let base_url = status.base_url.clone().unwrap();
    assert!(base_url.starts_with("http://127.0.0.1:"), "{base_url}");
    assert!(status.pid.is_some());
    assert_eq!(
        events
            .running_count
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "routed before ready"
    );

    let status = wait_for(&sup, &id, Duration::from_secs(10), "running", is_running).await;
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "running before the engine was ready"
    );
    let (routed_url, key, served) = events.running(&id);
    assert_eq!(routed_url, base_url);
    assert_eq!(Some(routed_url.clone()), status.base_url);
    assert_eq!(served, "tiny-chat");
    assert!(key.len() >= 40, "a generated key of 32 random bytes");
    check_openai_surface(&routed_url, &key, "tiny-chat").await;

    // The key and the token never reach argv, and local models run offline.
    let logs = sup.logs(&id, 100).unwrap();
    let argv = logs
        .iter()
        .find(|l| l.starts_with("fake-engine: argv"))
        .unwrap();
    assert!(argv.contains("--host 127.0.0.1"), "{argv}");
    assert!(argv.contains("--alias tiny-chat"), "{argv}");
    assert!(argv.contains("--ctx-size 256"), "{argv}");
    assert!(!argv.contains(&key), "{argv}");
    assert!(logs.iter().any(|l| l.contains("offline=1")), "{logs:?}");
    sup.shutdown().await;
}

#[tokio::test]
async fn vllm_style_arguments_are_accepted() {
    let models = models_dir();
    let events = recorder();
    let sup = supervisor(fast_options(models.path()), events.clone());
    let id = EngineId::from("vllm-1");
    sup.upsert(
        id.clone(),
        spec(
            json!({"name": "qwen", "engine": "vllm", "runtime": "process", "model": "org/tiny-hf",
            "settings": {"max_model_len": 1024, "enable_prefix_caching": false}}),
        ),
    )
    .unwrap();
    sup.start(&id).unwrap();
    wait_for(&sup, &id, Duration::from_secs(10), "running", is_running).await;
    let (base_url, key, served) = events.running(&id);
    assert_eq!(served, "qwen");
    check_openai_surface(&base_url, &key, "qwen").await;
    let argv = sup
        .logs(&id, 50)
        .unwrap()
        .into_iter()
        .find(|l| l.starts_with("fake-engine: argv"))
        .unwrap();
    assert!(argv.contains("argv serve "), "{argv}");
    assert!(
        argv.contains("--served-model-name qwen --max-model-len 1024 --no-enable-prefix-caching"),
        "{argv}"
    );
    sup.shutdown().await;
}

#[tokio::test]
async fn a_crash_fails_with_the_last_lines_then_restarts_with_backoff() {
    let models = models_dir();
    let events = recorder();
    let sup = supervisor(fast_options(models.path()), events.clone());
    let id = EngineId::from("crashy");
    sup.upsert(
        id.clone(),
        llama_spec(json!({"FAKE_ENGINE_CRASH_AFTER_MS": "400"})),
    )
    .unwrap();
    sup.start(&id).unwrap();
    wait_for(&sup, &id, Duration::from_secs(10), "running", is_running).await;

    let failed = wait_for(&sup, &id, Duration::from_secs(10), "failed", |s| {
        matches!(s.state, EngineState::Failed { .. })
    })
    .await;
    let EngineState::Failed {
        reason,
        last_log_lines,
        retry_in_ms,
    } = failed.state
    else {
        unreachable!()
    };
    assert_eq!(reason, "exited unexpectedly (exit code 3)");
    assert!(
        last_log_lines
            .iter()
            .any(|l| l.contains("fatal: simulated crash")),
        "{last_log_lines:?}"
    );
    assert_eq!(retry_in_ms, Some(300), "first backoff is the base");
    assert_eq!(
        events.withdrawals(&id).first().map(|w| w.0),
        Some(WithdrawReason::Exited)
    );

    // Restarted after the backoff: starting again, then running, counted.
    let failed_at = Instant::now();
    let again = wait_for(&sup, &id, Duration::from_secs(10), "restart", |s| {
        s.restarts >= 1
    })
    .await;
    assert!(
        failed_at.elapsed() >= Duration::from_millis(250),
        "restarted before the backoff"
    );
    assert!(
        matches!(again.state, EngineState::Starting | EngineState::Running),
        "{again:?}"
    );
    // The second failure waits twice as long.
    let second = wait_for(&sup, &id, Duration::from_secs(10), "second failure", |s| {
        s.restarts >= 1 && matches!(s.state, EngineState::Failed { .. })
    })
    .await;
    let EngineState::Failed { retry_in_ms, .. } = second.state else {
        unreachable!()
    };
    assert_eq!(retry_in_ms, Some(600));
    assert!(
        events
            .running_count
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 2
    );

    // A stop during the backoff leaves it stopped.
    sup.stop(&id).await.unwrap();
    assert_eq!(sup.status(&id).unwrap().state, EngineState::Stopped);
    sup.shutdown().await;
}

#[tokio::test]
async fn an_engine_that_dies_while_loading_shows_why() {
    let models = models_dir();
    let sup = supervisor(fast_options(models.path()), recorder());
    let id = EngineId::from("oom");
    let mut spec =
        llama_spec(json!({"FAKE_ENGINE_EXIT_LINES": "loading model|CUDA error: out of memory"}));
    spec.restart = cortex_engines::RestartPolicy::Never;
    sup.upsert(id.clone(), spec).unwrap();
    sup.start(&id).unwrap();
    let failed = wait_for(&sup, &id, Duration::from_secs(10), "failed", |s| {
        matches!(s.state, EngineState::Failed { .. })
    })
    .await;
    let EngineState::Failed {
        reason,
        last_log_lines,
        retry_in_ms,
    } = failed.state
    else {
        unreachable!()
    };
    assert_eq!(reason, "exited before it was ready (exit code 1)");
    assert_eq!(retry_in_ms, None, "restart = never");
    let tail: Vec<&str> = last_log_lines
        .iter()
        .rev()
        .take(2)
        .map(String::as_str)
        .collect();
    assert_eq!(tail, ["CUDA error: out of memory", "loading model"]);
    assert_eq!(failed.restarts, 0);
    // Never restarted.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(matches!(
        sup.status(&id).unwrap().state,
        EngineState::Failed { .. }
    ));
    sup.shutdown().await;
}

#[tokio::test]
async fn stop_withdraws_from_routing_before_the_signal_and_ends_the_group() {
    let models = models_dir();
    let events = recorder();
    let sup = supervisor(fast_options(models.path()), events.clone());
    let id = EngineId::from("grouped");
    sup.upsert(
        id.clone(),
        llama_spec(json!({"FAKE_ENGINE_SPAWN_CHILD": "1"})),
    )
    .unwrap();
    sup.start(&id).unwrap();
    let status = wait_for(&sup, &id, Duration::from_secs(10), "running", is_running).await;
    let leader = status.pid.unwrap();
    let child: u32 = sup
        .logs(&id, 50)
        .unwrap()
        .iter()
        .find_map(|l| {
            l.strip_prefix("fake-engine: child pid ")
                .map(|p| p.parse().unwrap())
        })
        .expect("the fake engine reports its child");
    assert!(process_alive(leader) && process_alive(child));

    sup.stop(&id).await.unwrap();
    assert_eq!(sup.status(&id).unwrap().state, EngineState::Stopped);
    assert_eq!(
        events.withdrawals(&id),
        [(WithdrawReason::Stop, true)],
        "withdrawn once, while the engine still accepted connections"
    );
    wait_gone(leader).await;
    wait_gone(child).await;
    let (base_url, _, _) = events.running(&id);
    assert!(
        http()
            .get(format!("{base_url}/health"))
            .send()
            .await
            .is_err(),
        "the port still answers"
    );
    assert!(sup
        .logs(&id, 20)
        .unwrap()
        .iter()
        .any(|l| l.contains("SIGTERM, shutting down")));
    sup.shutdown().await;
}

#[tokio::test]
async fn an_engine_ignoring_sigterm_is_killed_after_the_grace_period() {
    let models = models_dir();
    let mut options = fast_options(models.path());
    options.stop_grace = Duration::from_millis(500);
    let sup = supervisor(options, recorder());
    let id = EngineId::from("stubborn");
    sup.upsert(
        id.clone(),
        llama_spec(json!({"FAKE_ENGINE_IGNORE_SIGTERM": "1"})),
    )
    .unwrap();
    sup.start(&id).unwrap();
    let pid = wait_for(&sup, &id, Duration::from_secs(10), "running", is_running)
        .await
        .pid
        .unwrap();
    let stopping = Instant::now();
    sup.stop(&id).await.unwrap();
    assert!(stopping.elapsed() >= Duration::from_millis(500));
    wait_gone(pid).await;
    let logs = sup.logs(&id, 20).unwrap();
    assert!(
        logs.iter().any(|l| l.contains("ignoring SIGTERM")),
        "{logs:?}"
    );
    assert!(
        logs.iter()
            .any(|l| l.contains("cortex: engine stopped (signal 9)")),
        "{logs:?}"
    );
    sup.shutdown().await;
}

#[tokio::test]
async fn not_ready_in_time_is_a_failure_and_the_process_is_gone() {
    let models = models_dir();
    let mut options = fast_options(models.path());
    options.ready_timeout = Duration::from_millis(800);
    let sup = supervisor(options, recorder());
    let id = EngineId::from("slow");
    let mut spec = llama_spec(json!({"FAKE_ENGINE_READY_DELAY_MS": "60000"}));
    spec.restart = cortex_engines::RestartPolicy::Never;
    sup.upsert(id.clone(), spec).unwrap();
    sup.start(&id).unwrap();
    let pid = wait_for(&sup, &id, Duration::from_secs(5), "a pid", |s| {
        s.pid.is_some()
    })
    .await
    .pid
    .unwrap();
    let failed = wait_for(&sup, &id, Duration::from_secs(10), "failed", |s| {
        matches!(s.state, EngineState::Failed { .. })
    })
    .await;
    let EngineState::Failed { reason, .. } = failed.state else {
        unreachable!()
    };
    assert!(reason.starts_with("not ready within"), "{reason}");
    wait_gone(pid).await;
    sup.shutdown().await;
}

#[tokio::test]
async fn secrets_never_reach_the_logs() {
    let models = models_dir();
    let events = recorder();
    let sup = supervisor(fast_options(models.path()), events.clone());
    let id = EngineId::from("chatty");
    let mut spec = llama_spec(json!({"FAKE_ENGINE_PRINT_SECRETS": "1"}));
    spec.hf_token = Some("hf_thisisatoken".to_owned().into());
    sup.upsert(id.clone(), spec).unwrap();
    sup.start(&id).unwrap();
    wait_for(&sup, &id, Duration::from_secs(10), "running", is_running).await;
    let (_, key, _) = events.running(&id);
    let logs = sup.logs(&id, 100).unwrap().join("\n");
    assert!(logs.contains("fake-engine: api key [REDACTED]"), "{logs}");
    assert!(logs.contains("fake-engine: hf token [REDACTED]"), "{logs}");
    assert!(
        !logs.contains(&key) && !logs.contains("hf_thisisatoken"),
        "{logs}"
    );
    sup.shutdown().await;
}

#[tokio::test]
async fn restart_withdraws_then_serves_on_a_new_port_with_a_new_key() {
    let models = models_dir();
    let events = recorder();
    let sup = supervisor(fast_options(models.path()), events.clone());
    let id = EngineId::from("restarted");
    sup.upsert(id.clone(), llama_spec(json!({}))).unwrap();
    sup.start(&id).unwrap();
    let first = wait_for(&sup, &id, Duration::from_secs(10), "running", is_running).await;
    let (first_url, first_key, _) = events.running(&id);
    sup.restart(&id).unwrap();
    wait_for(&sup, &id, Duration::from_secs(10), "running again", |s| {
        is_running(s) && s.pid != first.pid
    })
    .await;
    let (second_url, second_key, _) = events.running(&id);
    assert_ne!(first_key, second_key);
    assert_ne!(first_url, second_url);
    assert_eq!(events.withdrawals(&id), [(WithdrawReason::Restart, true)]);
    wait_gone(first.pid.unwrap()).await;
    // The old key does not open the new engine.
    let refused = http()
        .get(format!("{second_url}/v1/models"))
        .bearer_auth(&first_key)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    sup.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_every_engine_and_refuses_new_commands() {
    let models = models_dir();
    let events = recorder();
    let sup = supervisor(fast_options(models.path()), events.clone());
    let mut pids = Vec::new();
    for name in ["a", "b"] {
        let id = EngineId::from(name);
        sup.upsert(id.clone(), llama_spec(json!({}))).unwrap();
        sup.start(&id).unwrap();
        pids.push(
            wait_for(&sup, &id, Duration::from_secs(10), "running", is_running)
                .await
                .pid
                .unwrap(),
        );
    }
    sup.shutdown().await;
    for pid in pids {
        wait_gone(pid).await;
    }
    for name in ["a", "b"] {
        assert_eq!(
            events.withdrawals(&EngineId::from(name)),
            [(WithdrawReason::Shutdown, true)]
        );
    }
    assert!(matches!(
        sup.start(&EngineId::from("a")),
        Err(SupervisorError::ShuttingDown)
    ));
    assert!(matches!(
        sup.upsert(EngineId::from("c"), llama_spec(json!({}))),
        Err(SupervisorError::ShuttingDown)
    ));
}

#[tokio::test]
async fn remove_stops_first_and_unknown_ids_are_errors() {
    let models = models_dir();
    let events = recorder();
    let sup = supervisor(fast_options(models.path()), events.clone());
    let id = EngineId::from("gone");
    sup.upsert(id.clone(), llama_spec(json!({}))).unwrap();
    sup.start(&id).unwrap();
    let pid = wait_for(&sup, &id, Duration::from_secs(10), "running", is_running)
        .await
        .pid
        .unwrap();
    sup.remove(&id).await.unwrap();
    wait_gone(pid).await;
    assert_eq!(events.withdrawals(&id).len(), 1);
    assert!(sup.status(&id).is_none());
    assert!(matches!(sup.start(&id), Err(SupervisorError::NotFound(_))));
    assert!(matches!(
        sup.stop(&id).await,
        Err(SupervisorError::NotFound(_))
    ));
    sup.shutdown().await;
}

#[tokio::test]
async fn refusals_happen_at_upsert_or_as_a_failed_start() {
    let models = models_dir();
    let sup = supervisor(fast_options(models.path()), recorder());
    let mut bad = llama_spec(json!({}));
    bad.extra_args = vec!["--host=0.0.0.0".into()];
    let error = sup
        .upsert(EngineId::from("x"), bad)
        .unwrap_err()
        .to_string();
    assert!(error.contains("`--host`"), "{error}");

    // A model that disappears after create fails the start with the containment reason.
    let id = EngineId::from("vanished");
    let mut vanished = llama_spec(json!({}));
    vanished.model = "missing.gguf".into();
    vanished.restart = cortex_engines::RestartPolicy::Never;
    sup.upsert(id.clone(), vanished).unwrap();
    sup.start(&id).unwrap();
    let failed = wait_for(&sup, &id, Duration::from_secs(5), "failed", |s| {
        matches!(s.state, EngineState::Failed { .. })
    })
    .await;
    let EngineState::Failed { reason, .. } = failed.state else {
        unreachable!()
    };
    assert!(reason.contains("missing.gguf"), "{reason}");

    // Docker engines without a docker runtime fail clearly.
    let id = EngineId::from("docker-less");
    let docker_spec = spec(
        json!({"name": "d", "engine": "llamacpp", "runtime": "docker", "image": "img:1",
        "model": "tiny.gguf", "restart": "never"}),
    );
    sup.upsert(id.clone(), docker_spec).unwrap();
    sup.start(&id).unwrap();
    let failed = wait_for(&sup, &id, Duration::from_secs(5), "failed", |s| {
        matches!(s.state, EngineState::Failed { .. })
    })
    .await;
    let EngineState::Failed { reason, .. } = failed.state else {
        unreachable!()
    };
    assert!(
        reason.contains("docker runtime is not configured"),
        "{reason}"
    );
    sup.shutdown().await;
}

#[tokio::test]
async fn dry_run_and_local_models_through_the_supervisor() {
    let models = models_dir();
    let sup = supervisor(fast_options(models.path()), recorder());
    let mut spec = llama_spec(json!({}));
    spec.hf_token = Some("hf_dry".to_owned().into());
    let dry = sup.dry_run(&spec).unwrap();
    let text = serde_json::to_string(&dry).unwrap();
    assert!(!text.contains("hf_dry"), "{text}");
    assert_eq!(dry.env["LLAMA_API_KEY"], "[REDACTED]");
    assert!(dry.command.iter().any(|a| a.ends_with("tiny.gguf")));
    let local = sup.local_models().await.unwrap();
    let paths: Vec<&str> = local.iter().map(|m| m.path.as_str()).collect();
    assert_eq!(paths, ["org/tiny-hf", "tiny.gguf"]);
    sup.shutdown().await;
}

#[tokio::test]
async fn an_engine_that_ignores_its_key_is_never_routed() {
    let models = models_dir();
    let events = recorder();
    let sup = supervisor(fast_options(models.path()), events.clone());
    let id = EngineId::from("open");
    let mut open = llama_spec(json!({"FAKE_ENGINE_NO_AUTH": "1"}));
    open.restart = cortex_engines::RestartPolicy::Never;
    sup.upsert(id.clone(), open).unwrap();
    sup.start(&id).unwrap();
    let pid = wait_for(&sup, &id, Duration::from_secs(5), "a pid", |s| {
        s.pid.is_some()
    })
    .await
    .pid
    .unwrap();
    let failed = wait_for(&sup, &id, Duration::from_secs(10), "failed", |s| {
        matches!(s.state, EngineState::Failed { .. })
    })
    .await;
    let EngineState::Failed { reason, .. } = failed.state else {
        unreachable!()
    };
    assert!(reason.contains("without its API key"), "{reason}");
    assert_eq!(
        events
            .running_count
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    wait_gone(pid).await;
    let logs = sup.logs(&id, 5).unwrap();
    assert!(
        logs.last()
            .unwrap()
            .starts_with("cortex: failed: the engine answers"),
        "{logs:?}"
    );
    sup.shutdown().await;
}
