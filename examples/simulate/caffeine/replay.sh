#!/bin/bash
# Replays traces through the real Caffeine (Debian's libcaffeine-java, 2.6.2: W-TinyLFU with a
# fixed 1% window; the hill climber came in 2.7) and prints the simulator's table rows.
#
#   bash examples/simulate/caffeine/replay.sh TRACE...
#
# Caffeine seeds its sketch at random: each row is the mean of RUNS replays (default 4).
# The traces go through the simulator's own reader (`simulate --keys-out`), so the rows and
# sizes are the simulator's defaults for each trace. Needs a JDK; installs what is missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
jar=/usr/share/java/caffeine.jar
if [ ! -f "$jar" ] || ! command -v javac >/dev/null; then
  sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  sudo_if_needed apt-get install -y -q libcaffeine-java default-jdk-headless >&2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$root" && cargo run -q --release --example simulate -- --keys-out "$work/keys" "$@")
javac -d "$work" -cp "$jar" "$here/Replay.java"
java -Xmx4g -Druns="${RUNS:-4}" -cp "$jar:$work" Replay "$work"/keys/*.keys
