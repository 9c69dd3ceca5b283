// `handle_batch` has no default: leaving it out is a compile error.
use sluice_sdk::prelude::*;

struct NoHandler;

impl Rule for NoHandler {
    fn filter(event: &Event<'_>) -> bool {
        event.kind() == "x"
    }
}

export_rule!(NoHandler);

fn main() {}
