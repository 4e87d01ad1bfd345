#!/usr/bin/env bash
# The script `cc-imds get --shell` replaces: one token, one curl per value, each printed as
# a quoted shell assignment (what `cc-imds get --shell` prints, so outputs can be compared).
#   curl-values.sh BASE_URL NAME=PATH...
set -euo pipefail
base=$1
shift
quote() { local v=${1//\'/\'\\\'\'}; printf "'%s'" "$v"; }
tok=$(curl -sf -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 21600" "$base/latest/api/token")
for pair in "$@"; do
  value=$(curl -sf -H "X-aws-ec2-metadata-token: $tok" "$base/latest/${pair#*=}")
  printf '%s=%s\n' "${pair%%=*}" "$(quote "$value")"
done
