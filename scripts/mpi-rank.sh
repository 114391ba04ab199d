#!/bin/sh
# Runs one rank of an MPI job so that a killed rank is named by the others
# (docs/distributed.md, "Faults"). Use with MPICH's launcher:
#
#   mpiexec -disable-auto-cleanup -n 2 scripts/mpi-rank.sh target/release/examples/maml_sine --mpi …
#
# MPICH's launcher (hydra) kills the whole job at once when a rank dies *by a
# signal*, even with -disable-auto-cleanup, so no survivor could report. This
# wrapper turns the rank's death into a plain exit (status 128 + signal), which
# hydra under -disable-auto-cleanup answers only by sending the other ranks
# SIGUSR1; blo's `Mpi` catches that notice, names the rank whose heartbeat
# stopped and exits with status 75. The wrapper itself ignores the notice
# (`trap : USR1`: it receives it too, as the leader of the rank's process group).
#
# Both additions are needed: without -disable-auto-cleanup hydra answers the
# wrapper's non-zero exit by killing the other ranks (no one names the rank).
# A kill landing mid-exchange needs nothing more here: blo's `Mpi::init` sets
# UCX_RNDV_THRESH=inf (unless set) so no rank copies out of a dead rank's memory
# (docs/distributed.md, "A rank killed mid-exchange").
trap : USR1
"$@"
exit $?
