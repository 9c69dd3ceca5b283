# Sourced by the scripts: makes sure the guest target is installed.
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "installing the wasm32-wasip2 target" >&2
    rustup target add wasm32-wasip2
fi

# The dev binary (target/debug/sluice), built as the tests build it: with
# the failpoints feature, inert unless FAILPOINTS is set. The integration
# tests run that path, so a build without the feature would leave them a
# binary whose crash points never fire; and one build serves the demo,
# the scripts and the tests.
build_sluice() {
    cargo build --quiet -p sluice --bin sluice --features failpoints
}
