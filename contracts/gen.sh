#!/usr/bin/env bash
# Regenerates contracts/messages.pb.go from contracts/messages.proto.
#
# Usage: bash contracts/gen.sh [OUT_DIR]
#
# OUT_DIR defaults to the contracts directory. protoc-gen-go is built from the
# google.golang.org/protobuf version pinned in the module's go.mod, so the
# generated code always matches the runtime the module links against.
set -euo pipefail

if ! command -v protoc >/dev/null 2>&1; then
	echo "gen.sh: protoc not found on PATH: install protobuf-compiler" >&2
	exit 1
fi

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root_dir="$(cd "${script_dir}/.." && pwd)"
out_dir="${1:-${script_dir}}"

mkdir -p "${out_dir}"
out_dir="$(cd "${out_dir}" && pwd)"

tmp_dir="$(mktemp -d)"
trap 'rm -rf "${tmp_dir}"' EXIT

# Build the plugin from the module's own dependency (version from go.mod).
(cd "${root_dir}" && "${GO:-go}" build -o "${tmp_dir}/bin/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go)

# Compile relative to the module root so the registered file name is
# "contracts/messages.proto" rather than a bare, collision-prone "messages.proto".
mkdir -p "${tmp_dir}/out"
(cd "${root_dir}" && protoc \
	--plugin=protoc-gen-go="${tmp_dir}/bin/protoc-gen-go" \
	--proto_path=. \
	--go_out="${tmp_dir}/out" \
	--go_opt=paths=source_relative \
	contracts/messages.proto)

cp "${tmp_dir}/out/contracts/messages.pb.go" "${out_dir}/messages.pb.go"
