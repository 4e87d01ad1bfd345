#!/usr/bin/env bash
# Contenders C and D: what users write by hand today. bash + curl over IMDSv2,
# one curl per value; with --token-per-value, a new token for every value, as
# per-call tools such as amazon-ec2-utils' ec2-metadata do.
#   imds-curl.sh [--token-per-value] BASE_URL COUNT OUT_DIR
set -euo pipefail
per_value=0
if [ "$1" = "--token-per-value" ]; then per_value=1; shift; fi
base=$1 count=$2 out=$3
token() { curl -sf -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 21600" "$base/latest/api/token"; }
get() { curl -sf -H "X-aws-ec2-metadata-token: $1" "$base/latest/$2"; }
quote() { local v=${1//\'/\'\\\'\'}; printf "'%s'" "$v"; }

mkdir -p "$out"
tok=$(token)
{
  printf '# Written by cc-imds from instance metadata. Local changes are overwritten.\n'
  for ((i = 0; i < count; i++)); do
    name=$(printf 'v%03d' "$i")
    [ "$per_value" = 1 ] && tok=$(token)
    printf 'export V%03d=%s\n' "$i" "$(quote "$(get "$tok" "meta-data/bench/$name")")"
  done
  [ "$per_value" = 1 ] && tok=$(token)
  for tag in $(get "$tok" meta-data/tags/instance/); do
    [ "$per_value" = 1 ] && tok=$(token)
    printf 'export TAG_%s=%s\n' "${tag//[^A-Za-z0-9_]/_}" "$(quote "$(get "$tok" "meta-data/tags/instance/$tag")")"
  done
} > "$out/bench.sh.tmp"
[ "$per_value" = 1 ] && tok=$(token)
region=$(get "$tok" meta-data/bench/v000)
printf 'first = %s\n' "$region" > "$out/bench.conf.tmp"
mv "$out/bench.sh.tmp" "$out/bench.sh"
mv "$out/bench.conf.tmp" "$out/bench.conf"
