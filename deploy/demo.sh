#!/usr/bin/env bash
# `make demo`: the real pipeline end to end on a local broker.
#
# Starts Apache Kafka (from Maven Central jars) and the fake OpenAI server unless they are
# already there (with OPENAI_API_KEY set, the real provider at OPENAI_BASE_URL is used instead),
# creates fresh demo topics, produces ~200 mixed messages, runs `modstream consume` until idle,
# prints what came out, and stops whatever it started.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
mkdir -p .run
py=$root/.venv/bin/python
ms=$root/.venv/bin/modstream
count=${DEMO_COUNT:-200}
fake_port=${DEMO_FAKE_PORT:-8400}

started_kafka=0
fake_pid=
cleanup() {
  [ -n "$fake_pid" ] && kill "$fake_pid" 2>/dev/null && wait "$fake_pid" 2>/dev/null || true
  if [ "$started_kafka" = 1 ]; then KAFKA_PYTHON=$py deploy/kafka/kafka.sh down >/dev/null; fi
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Kafka"
if KAFKA_PYTHON=$py deploy/kafka/kafka.sh status >/dev/null 2>&1; then
  echo "using the broker already running on localhost:${KAFKA_PORT:-9092}"
else
  KAFKA_PYTHON=$py deploy/kafka/kafka.sh up
  started_kafka=1
fi

step "Model"
if [ -n "${OPENAI_API_KEY:-}" ]; then
  echo "using the real provider at ${OPENAI_BASE_URL:-https://api.openai.com/v1} (OPENAI_API_KEY is set)"
else
  MODSTREAM_FAKE_LATENCY_MS=${MODSTREAM_FAKE_LATENCY_MS:-150} MODSTREAM_FAKE_LATENCY_DIST=exponential \
  MODSTREAM_FAKE_P_429=${MODSTREAM_FAKE_P_429:-0.05} MODSTREAM_FAKE_P_REFUSAL=0.01 \
    "$ms" fake-openai --port "$fake_port" > "$root/.run/demo-fake.log" 2>&1 &
  fake_pid=$!
  export OPENAI_BASE_URL=http://127.0.0.1:$fake_port/v1 OPENAI_API_KEY=demo-key-not-secret
  "$py" - "$fake_port" <<'PY'
import sys, time, urllib.request
port = sys.argv[1]
for _ in range(100):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/_fake/stats", timeout=1)
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("fake OpenAI server did not start; see .run/demo-fake.log")
PY
  echo "fake OpenAI server (keyword heuristic, NOT a model) on 127.0.0.1:$fake_port, 150 ms mean latency, 5 % 429s"
fi

run=$(date +%Y%m%d%H%M%S)
export MODSTREAM_INPUT_TOPIC=demo.$run.requests MODSTREAM_VERDICT_TOPIC=demo.$run.verdicts \
  MODSTREAM_USAGE_TOPIC=demo.$run.usage MODSTREAM_DLQ_TOPIC=demo.$run.dead-letters \
  MODSTREAM_GROUP_ID=demo-$run MODSTREAM_LOG_FORMAT=console MODSTREAM_LOG_LEVEL=${MODSTREAM_LOG_LEVEL:-WARNING} \
  MODSTREAM_CONCURRENCY=${MODSTREAM_CONCURRENCY:-32}

step "Topics (demo.$run.*)"
"$ms" topics

step "Produce $count mixed messages"
"$ms" sample --count "$count"

step "modstream consume (until 3 s idle)"
start=$SECONDS
"$ms" consume --exit-when-idle 3
echo "consumer exited 0 after $((SECONDS - start)) s (including the 3 s idle wait)"

step "What came out"
"$ms" report
