// A component has one rule: exporting twice is a compile error.
use sluice_sdk::prelude::*;

struct A;

impl Rule for A {
    fn handle_batch(_: &Batch<'_>) -> Result<Vec<Emit>, RuleError> {
        Ok(vec![])
    }
}

export_rule!(A);
export_rule!(A);

fn main() {}
