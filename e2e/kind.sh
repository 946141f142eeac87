#!/usr/bin/env bash
# The e2e suite on a kind cluster: create the cluster, build the image (the
# Dockerfile's e2e target, which also carries the test modules) and load it,
# install the chart with e2e/values-e2e.yaml, run the same cases as
# `cargo xtask e2e`, uninstall, check that no webhook configuration is left,
# and delete the cluster (also on failure or Ctrl-C).
#
# Needs: docker (with a running engine), kind, helm (3.x), cargo.
#
#   e2e/kind.sh                       # everything
#   e2e/kind.sh ingress_tls           # only the cases whose test name matches
#
# Environment:
#   PORTCULLIS_KIND_CLUSTER  cluster name (default portcullis-e2e)
#   PORTCULLIS_KIND_IMAGE    node image, e.g. kindest/node:v1.37.2 (default: kind's)
#   PORTCULLIS_KIND_KEEP=1   keep the cluster afterwards (to poke at a failure)
#   PORTCULLIS_IMAGE         image to build and load (default portcullis/webhook-server:e2e)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cluster=${PORTCULLIS_KIND_CLUSTER:-portcullis-e2e}
image=${PORTCULLIS_IMAGE:-portcullis/webhook-server:e2e}
release=portcullis
namespace=portcullis-system
chart="$root/charts/portcullis"
values="$root/e2e/values-e2e.yaml"

say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
die() { printf 'kind.sh: %s\n' "$*" >&2; exit 1; }

for tool in docker kind helm cargo; do
  command -v "$tool" >/dev/null || die "$tool is not installed (needed: docker, kind, helm, cargo)"
done
docker info >/dev/null 2>&1 || die "docker cannot reach a Docker engine (kind needs one)"

work=$(mktemp -d)
kubeconfig="$work/kubeconfig"
created=""
cleanup() {
  status=$?
  if [[ -n "$created" && -z "${PORTCULLIS_KIND_KEEP:-}" ]]; then
    say "deleting kind cluster $cluster"
    kind delete cluster --name "$cluster" || true
  elif [[ -n "$created" ]]; then
    printf 'kind.sh: kept cluster %s; kubeconfig: kind get kubeconfig --name %s\n' "$cluster" "$cluster" >&2
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "creating kind cluster $cluster"
if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  die "a kind cluster named $cluster exists already; delete it or set PORTCULLIS_KIND_CLUSTER"
fi
node_image=()
if [[ -n "${PORTCULLIS_KIND_IMAGE:-}" ]]; then node_image=(--image "$PORTCULLIS_KIND_IMAGE"); fi
kind create cluster --name "$cluster" --kubeconfig "$kubeconfig" --wait 180s "${node_image[@]}"
created=1
export KUBECONFIG="$kubeconfig"
export PORTCULLIS_E2E_KUBECONFIG="$kubeconfig"

say "building $image (charts/image/Dockerfile, target e2e) and loading it into the cluster"
docker build -f "$root/charts/image/Dockerfile" --target e2e -t "$image" "$root"
kind load docker-image "$image" --name "$cluster"

say "building the e2e runner"
cargo build --manifest-path "$root/Cargo.toml" -p e2e --bin portcullis-e2e
cargo test --manifest-path "$root/Cargo.toml" -p e2e --test cases --no-run
e2e() { "$root/target/debug/portcullis-e2e" "$@"; }

say "chart: lint and install ($release in $namespace)"
helm lint --strict "$chart" -f "$values"
helm install "$release" "$chart" \
  --namespace "$namespace" --create-namespace \
  -f "$values" \
  --set image.repository="${image%:*}" --set image.tag="${image##*:}" --set image.pullPolicy=Never \
  --wait --timeout 5m

say "chart: server-side dry run of the default and example renders"
renders=("$work/default.yaml")
helm template portcullis-dry-run "$chart" --namespace "$namespace" >"$work/default.yaml"
for example in "$chart"/examples/*.yaml; do
  out="$work/$(basename "$example")"
  helm template portcullis-dry-run "$chart" --namespace "$namespace" -f "$example" >"$out"
  renders+=("$out")
done
e2e apply --dry-run --skip-unknown-kinds --namespace "$namespace" "${renders[@]}"

say "cases"
cargo test --manifest-path "$root/Cargo.toml" -p e2e --test cases -- --ignored --test-threads=1 "$@"

say "uninstall leaves no webhook configuration behind"
helm uninstall "$release" --namespace "$namespace" --wait
for webhook_kind in ValidatingWebhookConfiguration MutatingWebhookConfiguration; do
  e2e expect-none --api-version admissionregistration.k8s.io/v1 --kind "$webhook_kind" \
    --selector "app.kubernetes.io/instance=$release"
done

say "kind e2e passed"
