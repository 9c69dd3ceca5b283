//! The `sluice:rule/projected-rule` world, implemented by forwarding every export to
//! the `sluice:rule-python/guest` interface a Python rule exports (see
//! `../wit/rule-python.wit` for why). `wac plug` composes the two into one
//! component; the values pass through unchanged.

/// Generated code, as the SDK keeps its own (`guest-sdk`).
#[allow(clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        world: "sluice:rule-python/adapter@0.1.0",
        path: ["../../../wit", "../wit"],
        generate_all,
    });
}

use bindings::sluice::rule::types::{
    Batch, Emit, Event, EventPack, Membership, ProjectedPack, RuleError, Selection,
};
use bindings::sluice::rule_python::guest;

struct Adapter;

impl bindings::Guest for Adapter {
    fn filter(event: Event) -> bool {
        guest::filter(&event)
    }

    fn partition_key(event: Event) -> Option<String> {
        guest::partition_key(&event)
    }

    fn membership(event: Event) -> Membership {
        guest::membership(&event)
    }

    fn select(events: EventPack) -> Selection {
        guest::select(&events)
    }

    fn handle_batch(batch: Batch) -> Result<Vec<Emit>, RuleError> {
        guest::handle_batch(&batch)
    }
}

impl bindings::exports::sluice::rule::projection::Guest for Adapter {
    fn select(events: ProjectedPack) -> Selection {
        guest::select_projected(&events)
    }
}

bindings::export!(Adapter with_types_in bindings);
