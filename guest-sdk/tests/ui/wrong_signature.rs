// Methods must have the trait's signatures.
use sluice_sdk::prelude::*;

struct Wrong;

impl Rule for Wrong {
    fn filter(kind: &str) -> bool {
        kind == "x"
    }

    fn handle_batch(_: &Batch<'_>) -> Result<Vec<Emit>, RuleError> {
        Ok(vec![])
    }
}

export_rule!(Wrong);

fn main() {}
