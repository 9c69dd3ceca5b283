// Exporting a type that does not implement `Rule` names the missing trait.
struct NotARule;

sluice_sdk::export_rule!(NotARule);

fn main() {}
