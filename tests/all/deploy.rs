//! The deploy service without a server: the saga's checks, swaps with
//! their record committed beside the registry's write, undeploys, tenant
//! deletion and the start-up restore.

use std::sync::Arc;

use sluice::clock::SharedClock;
use sluice::engine::deploy::{DeployError, DeployRequest, Deployments};
use sluice::engine::{Drain, Engine};
use sluice::log::EventQuery;
use sluice::tenants::Quotas;
use sluice_test_components::component_bytes;
use sluice_test_components::components::{ECHO, PR_DIGEST};

use crate::Harness;
use crate::engine::open_log;

fn manifest(version: u32, trigger: &str) -> String {
    format!("name = \"echo\"\nversion = {version}\n\n{trigger}")
}

const BATCH: &str = "[trigger.batch]\ncount = 2\nwindow = \"1m\"\n";
const DWELL: &str = "[trigger.dwell]\n[[trigger.dwell.reactions]]\nlabel = \"a\"\nafter = \"1m\"\n";

fn request(version: u32, trigger: &str, component: &str) -> DeployRequest {
    DeployRequest {
        tenant: "acme".into(),
        name: "echo".into(),
        manifest: manifest(version, trigger),
        component: component_bytes(component).into(),
        reset: false,
        quotas: Quotas::default(),
    }
}

/// The error is a refusal with `code`.
fn assert_code(e: &DeployError, code: &str) {
    let got = match e {
        DeployError::Invalid { code, .. }
        | DeployError::Conflict { code, .. }
        | DeployError::Refused { code, .. } => *code,
        other => panic!("{other:?}"),
    };
    assert_eq!(got, code, "{e:?}");
}

fn kinds(log: &sluice::log::EventLog) -> Vec<String> {
    log.query(&EventQuery {
        source: Some("sluice".into()),
        ..EventQuery::tenant("acme", 1_000)
    })
    .unwrap()
    .into_iter()
    .map(|e| e.kind)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploys_check_swap_record_and_restore_without_a_server() {
    let h = Harness::new();
    let clock: SharedClock = Arc::new(h.clock.clone());
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir, clock.clone());
    let deploys = Deployments::new(Engine::new(log.clone(), clock.clone()), h.runtime.clone());

    let (created, d) = deploys.deploy(request(1, BATCH, ECHO)).await.unwrap();
    assert!(created);
    assert_eq!(
        (d.outcome.as_str(), d.kind.as_str(), d.version),
        ("created", "batch", 1)
    );
    assert!(kinds(&log).is_empty(), "a first deploy records nothing");

    // The same upload again: unchanged. A version not raised: refused.
    let (_, d) = deploys.deploy(request(1, BATCH, ECHO)).await.unwrap();
    assert_eq!(d.outcome, "unchanged");
    let e = deploys
        .deploy(request(1, BATCH, PR_DIGEST))
        .await
        .unwrap_err();
    assert_code(&e, "version_not_raised");

    // A hot swap: the registry's write and the swap's record together.
    let (created, d) = deploys.deploy(request(2, BATCH, ECHO)).await.unwrap();
    assert!(!created);
    assert_eq!(d.outcome, "swapped");
    assert_eq!(kinds(&log), ["rule.swapped"]);
    assert_eq!(
        deploys
            .registry
            .get("acme", "echo")
            .unwrap()
            .unwrap()
            .version,
        2
    );

    // Another kind: refused before anything changes; with a reset, taken.
    let e = deploys.deploy(request(3, DWELL, ECHO)).await.unwrap_err();
    assert_code(&e, "kind_changed");
    assert_eq!(
        deploys
            .registry
            .get("acme", "echo")
            .unwrap()
            .unwrap()
            .version,
        2
    );
    let (_, d) = deploys
        .deploy(DeployRequest {
            reset: true,
            ..request(3, DWELL, ECHO)
        })
        .await
        .unwrap();
    assert_eq!((d.outcome.as_str(), d.kind.as_str()), ("reset", "dwell"));
    assert_eq!(kinds(&log), ["rule.swapped", "rule.reset"]);

    // Bad requests change nothing.
    let e = deploys
        .deploy(DeployRequest {
            name: "other".into(),
            ..request(4, DWELL, ECHO)
        })
        .await
        .unwrap_err();
    assert!(matches!(&e, DeployError::Invalid { .. }), "{e:?}");
    let e = deploys
        .deploy(DeployRequest {
            component: b"not wasm".to_vec().into(),
            ..request(4, DWELL, ECHO)
        })
        .await
        .unwrap_err();
    assert_code(&e, "invalid_component");
    let e = deploys
        .deploy(DeployRequest {
            name: "second".into(),
            manifest:
                "name = \"second\"\nversion = 1\n\n[trigger.batch]\ncount = 2\nwindow = \"1m\"\n"
                    .into(),
            quotas: Quotas {
                max_rules: 1,
                ..Quotas::default()
            },
            ..request(1, BATCH, ECHO)
        })
        .await
        .unwrap_err();
    assert_code(&e, "quota_exceeded");

    // A restart: the registry brings the rule back, at its version.
    deploys.engine.shutdown().await;
    drop(deploys);
    let deploys = Deployments::new(Engine::new(log.clone(), clock.clone()), h.runtime.clone());
    assert_eq!(deploys.restore(|_| Quotas::default()).await.unwrap(), 1);
    let status = deploys.engine.status("acme", "echo").unwrap();
    assert!(!status.paused);
    assert!(deploys.broken("acme", "echo").is_none());

    // Undeploy, then the tenant's rules all at once.
    deploys
        .undeploy("acme", "echo", Drain::Discard)
        .await
        .unwrap();
    assert!(deploys.registry.get("acme", "echo").unwrap().is_none());
    let e = deploys
        .undeploy("acme", "echo", Drain::Fire)
        .await
        .unwrap_err();
    assert!(matches!(e, DeployError::NoSuchRule(_)), "{e:?}");
    deploys.deploy(request(1, BATCH, ECHO)).await.unwrap();
    deploys.undeploy_tenant("acme", Drain::Fire).await.unwrap();
    assert!(deploys.registry.list_tenant("acme").unwrap().is_empty());
    deploys.engine.shutdown().await;
}
