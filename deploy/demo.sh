#!/usr/bin/env bash
# `make demo`: the real pipeline end to end on a local broker.
#
# Starts Apache Kafka (from Maven Central jars) and the fake OpenAI server unless they are
# already there (with OPENAI_API_KEY set, the real provider at OPENAI_BASE_URL is used instead),
# creates fresh demo topics, produces ~200 mixed messages, runs `modstream consume` until idle,
# prints what came out and the commands to look at it again, and stops whatever it started
# (KEEP=1 leaves the broker and the fake server running, so those commands work afterwards).
#
# FORMAT=avro (`make demo FORMAT=avro`) runs it through a schema registry (Apicurio, from Maven
# Central jars, deploy/registry): the requests are produced as Avro, the verdicts, usage events
# and dead letters written as Avro with their schemas registered at start-up, and one verdict
# is read back with Confluent's deserializer and the registry's schema.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
mkdir -p .run
py=$root/.venv/bin/python
ms=$root/.venv/bin/modstream
count=${DEMO_COUNT:-200}
fake_port=${DEMO_FAKE_PORT:-8400}
format=${FORMAT:-json}
case "$format" in
  json|avro) ;;
  *) echo "demo: FORMAT must be json or avro, not '$format'" >&2; exit 2 ;;
esac

started_kafka=0
started_registry=0
fake_pid=
keep=${KEEP:-0}
cleanup() {
  if [ "$keep" = 1 ]; then return; fi
  [ -n "$fake_pid" ] && kill "$fake_pid" 2>/dev/null && wait "$fake_pid" 2>/dev/null || true
  if [ "$started_kafka" = 1 ]; then KAFKA_PYTHON=$py deploy/kafka/kafka.sh down >/dev/null; fi
  if [ "$started_registry" = 1 ]; then REGISTRY_PYTHON=$py deploy/registry/registry.sh down >/dev/null; fi
}
trap cleanup EXIT

# Bold headings on a terminal only: a log file or CI keeps plain text.
if [ -t 1 ]; then
  step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
  step() { printf '\n== %s\n' "$*"; }
fi

step "Kafka"
if KAFKA_PYTHON=$py deploy/kafka/kafka.sh status >/dev/null 2>&1; then
  echo "using the broker already running on localhost:${KAFKA_PORT:-9092}"
else
  KAFKA_PYTHON=$py deploy/kafka/kafka.sh up
  started_kafka=1
fi

if [ "$format" = avro ]; then
  step "Schema registry"
  registry_url=http://127.0.0.1:${REGISTRY_PORT:-8081}/apis/ccompat/v6
  if REGISTRY_PYTHON=$py deploy/registry/registry.sh status >/dev/null 2>&1; then
    echo "using the registry already running at $registry_url"
  else
    REGISTRY_PYTHON=$py deploy/registry/registry.sh up
    started_registry=1
  fi
  export MODSTREAM_SCHEMA_REGISTRY_URL=$registry_url MODSTREAM_INPUT_FORMAT=avro \
    MODSTREAM_OUTPUT_FORMAT=avro
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

step "Produce $count mixed messages ($format)"
"$ms" sample --count "$count"

step "modstream consume (until 3 s idle)"
start=$SECONDS
"$ms" consume --exit-when-idle 3
echo "consumer exited 0 after $((SECONDS - start)) s (including the 3 s idle wait)"

step "What came out"
"$ms" report

if [ "$format" = avro ]; then
  step "Read back with the registry's schema (Confluent's deserializer, not modstream)"
  "$py" - <<'PY'
import asyncio, os
from aiokafka import AIOKafkaConsumer
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient
from confluent_kafka.schema_registry._async.avro import AsyncAvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

async def main() -> None:
    env = os.environ
    topics = [env[f"MODSTREAM_{t}_TOPIC"] for t in ("INPUT", "VERDICT", "USAGE", "DLQ")]
    async with AsyncSchemaRegistryClient({"url": env["MODSTREAM_SCHEMA_REGISTRY_URL"]}) as client:
        for topic in topics:
            latest = await client.get_latest_version(f"{topic}-value")
            level = await client.get_compatibility(f"{topic}-value")
            print(f"  {topic}-value: version {latest.version}, schema id {latest.schema_id}, {level}")
        bootstrap = env.get("MODSTREAM_KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")
        consumer = AIOKafkaConsumer(topics[1], bootstrap_servers=bootstrap,
                                    auto_offset_reset="earliest", group_id=None)
        async with consumer:
            record = await consumer.getone()
        verdict = await (await AsyncAvroDeserializer(client))(
            record.value, SerializationContext(topics[1], MessageField.VALUE))
        flagged = [name for name, c in verdict["categories"].items() if c["flagged"]]
        print(f"  first verdict ({len(record.value)} bytes of Avro): content_id={verdict['content_id']}"
              f" action={verdict['action']} flagged={flagged} model={verdict['model']}")

asyncio.run(main())
PY
fi

step "Look again"
bootstrap=${MODSTREAM_KAFKA_BOOTSTRAP_SERVERS:-localhost:${KAFKA_PORT:-9092}}
if [ "$keep" = 1 ]; then
  kept="The broker (localhost:${KAFKA_PORT:-9092})"
  [ "$started_registry" = 1 ] && kept="$kept, the registry ($MODSTREAM_SCHEMA_REGISTRY_URL)"
  [ -n "$fake_pid" ] && kept="$kept and the fake server (pid $fake_pid, port $fake_port)"
  stops="'make kafka-down'"
  [ -n "$fake_pid" ] && stops="$stops, 'kill $fake_pid'"
  [ "$started_registry" = 1 ] && stops="$stops, 'deploy/registry/registry.sh down'"
  echo "$kept keep running (KEEP=1): stop them with $stops."
else
  echo "What the demo started is stopped now; 'make demo KEEP=1' keeps it running, then:"
fi
# The fake's key is no secret; a real one is never printed (it is in the caller's environment).
model_env=
[ -n "$fake_pid" ] && model_env="OPENAI_BASE_URL=$OPENAI_BASE_URL OPENAI_API_KEY=$OPENAI_API_KEY "
registry_env=
[ "$format" = avro ] && registry_env="MODSTREAM_SCHEMA_REGISTRY_URL=$MODSTREAM_SCHEMA_REGISTRY_URL \\
    MODSTREAM_INPUT_FORMAT=avro MODSTREAM_OUTPUT_FORMAT=avro "
cat <<EOF
  export ${model_env}${registry_env}MODSTREAM_KAFKA_BOOTSTRAP_SERVERS=$bootstrap \\
    MODSTREAM_INPUT_TOPIC=$MODSTREAM_INPUT_TOPIC \\
    MODSTREAM_VERDICT_TOPIC=$MODSTREAM_VERDICT_TOPIC MODSTREAM_USAGE_TOPIC=$MODSTREAM_USAGE_TOPIC \\
    MODSTREAM_DLQ_TOPIC=$MODSTREAM_DLQ_TOPIC
  modstream report     # this summary again
  modstream replay --topic $MODSTREAM_INPUT_TOPIC --to-topic demo.$run.eval --dry-run
  modstream replay --topic $MODSTREAM_INPUT_TOPIC --to-topic demo.$run.eval
  modstream eval --verdicts demo.$run.eval --baseline $MODSTREAM_VERDICT_TOPIC
(modstream is .venv/bin/modstream; a replay takes --model, --prompt-version or --policy to try a candidate)
EOF
