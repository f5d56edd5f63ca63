#!/usr/bin/env bash
# Regenerate the shipped reference studies (results/reference/) with this checkout's code, one after another.
#
#   bash benchmarks/reference_results.sh                      # all of them, in the order below
#   bash benchmarks/reference_results.sh pareto grey_warmup   # some of them
#   REFERENCE_DIR=/tmp/ref bash benchmarks/reference_results.sh smoke_check
#
# Each study: run.py, then report.py, then its wall time appended to <dir>/timings.txt. A study folder that
# already exists is refused (move the old one away first): a reference study is made in one piece, never mixed
# with an older run. The checkpoints (tune/) are kept until you remove them: `rm -r results/reference/*/tune`.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${REFERENCE_DIR:-results/reference}
# Fashion-MNIST: a stratified 10,000-image training subset (of 56,000) keeps Model 1-5 x 3 seeds near an hour
# on 2 cores; validation and test are the full 7,000-image splits.
FASHION_SAMPLES=10000

declare -A command=(
  [models_1_to_5_fashion]="--space models_1_to_5.yaml --dataset fashion-mnist --max-train-samples $FASHION_SAMPLES"
  [models_1_to_5]="--space models_1_to_5.yaml --dataset mnist-5k"
  [grey_loss]="--space grey_loss.yaml --dataset mnist-5k"
  [grey_warmup]="--space grey_warmup.yaml --dataset mnist-5k"
  [pareto]="--space pareto.yaml --dataset mnist-5k"
  # More seeds for claim (b) (global vs per-class normalisation), pooled below with Model 1-5's seeds 0-2
  [models_1_2_seeds]="--space models_1_2_seeds.yaml --dataset mnist-5k"
  [models_1_2_seeds_fashion]="--space models_1_2_seeds.yaml --dataset fashion-mnist --max-train-samples $FASHION_SAMPLES --repeats 2"
  [grey_warmup_fashion]="--space grey_warmup.yaml --dataset fashion-mnist --max-train-samples $FASHION_SAMPLES"
  [smoke_check]="--space smoke.yaml --dataset mnist-5k"
)
order=(models_1_to_5_fashion models_1_to_5 grey_loss grey_warmup pareto models_1_2_seeds models_1_2_seeds_fashion
       grey_warmup_fashion)
# pooled study <- the studies it pools (same design, new seeds): written by report.py once all of them exist
declare -A pooled=(
  [models_1_to_5_pooled]="models_1_to_5 models_1_2_seeds"
  [models_1_to_5_fashion_pooled]="models_1_to_5_fashion models_1_2_seeds_fashion"
)
studies=("${@:-${order[@]}}")
for name in "${studies[@]}"; do
  if [[ -z "${command[$name]:-}" ]]; then
    echo "unknown study '$name'; known: ${!command[*]}" >&2; exit 2
  fi
  if [[ -e "$out/$name" ]]; then
    echo "$out/$name exists: move it away first (a reference study is made in one piece)" >&2; exit 2
  fi
done
mkdir -p "$out"
for name in "${studies[@]}"; do
  start=$(date +%s)
  # shellcheck disable=SC2086  # the flags are meant to split
  python study/run.py --name "$name" --results-dir "$out" ${command[$name]}
  trained=$(date +%s)
  python study/report.py "$out/$name"
  done_at=$(date +%s)
  echo "$name: study $((trained - start)) s, report $((done_at - trained)) s" | tee -a "$out/timings.txt"
done
for name in "${!pooled[@]}"; do
  read -r first more <<< "${pooled[$name]}"
  if [[ -d "$out/$first" && -d "$out/$more" ]]; then
    python study/report.py "$out/$first" --pool "$out/$more" --out "$out/$name" --no-details
  fi
done
