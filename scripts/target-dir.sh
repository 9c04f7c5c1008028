# Sourced by tests/run, scripts/demo and scripts/image (with ROOT set): the cargo build cache,
# shared by every checkout on this machine, outside the repository.
#
# Cargo judges the workspace's own crates fresh by file times alone, while they embed the path
# of the checkout that built them (CARGO_MANIFEST_DIR, where tests find crds/, docs/ and the
# binary's working files). When another checkout built last, its crates would run here against
# files that are not there (or not these), so they are rebuilt: their fingerprints are dropped.
# The dependencies stay cached.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/residency-operator/target}"
mkdir -p "$CARGO_TARGET_DIR"
if [[ "$(cat "$CARGO_TARGET_DIR/.checkout" 2>/dev/null)" != "$ROOT" ]]; then
  rm -rf "$CARGO_TARGET_DIR"/{debug,release}/.fingerprint/residency-operator-*
  echo "$ROOT" >"$CARGO_TARGET_DIR/.checkout"
fi
