#!/usr/bin/env bash
# The exact commands behind docs/reproduction/: breadth first, every study to round 100 before any
# goes further (a 2-core machine needs ~20 s a CIFAR-10 round per lane with two lanes, i.e. ~35 min per algorithm per
# 100 rounds; APFL ~60 s, its FL-bench variant ~90 s).
# Run from a checkout at a fixed commit; each command resumes where the previous session stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1
FH=${FEDHARNESS:-fedharness}
$FH study runs/studies/offline_reduced_fedobp_q.yaml --quiet --no-table
for until in 100 200 300 400; do
  $FH study runs/paper/study_cifar10_dir0.1.yaml --until-round "$until" --quiet --no-table
  $FH study runs/paper/study_cifar10_dir0.5.yaml --until-round "$until" --quiet --no-table
  $FH study runs/paper/study_mnist_dir0.1.yaml --until-round "$until" --quiet --no-table
done
# The first study, on the harness's own Dirichlet partition (docs/reproduction/cifar10_dir0.1_own_partition/):
#   $FH study runs/paper/study_cifar10_dir0.1_own_partition.yaml --until-round 100 --quiet --no-table
# What produced the committed rows when one session could not hold every cell: one cell (or a few, in the
# spec's order) at a time per background lane, each lane its own MLflow store, from a worktree at a fixed
# commit, then compare.py once per store (it merges the committed histories):
#   nice -n 19 fedharness study runs/paper/study_cifar10_dir0.1.yaml --cells fedavg,local --parallel 1 \
#       --until-round 100 --quiet --no-table --tracking-uri sqlite:///mlruns/exA.db
#   python docs/reproduction/compare.py --study runs/paper/study_cifar10_dir0.1.yaml \
#       --tracking-uri sqlite:///mlruns/exA.db --out docs/reproduction/cifar10_dir0.1
# A lane started in its own session (setsid, nohup from another shell) sits in its own scheduler autogroup
# (Linux, /proc/sys/kernel/sched_autogroup_enabled = 1), where `nice` ranks it only against its own processes:
# against the rest it still gets an equal share. To make it yield, lower its group:  echo 19 > /proc/PID/autogroup
