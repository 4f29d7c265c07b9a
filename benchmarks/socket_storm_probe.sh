#!/bin/sh
# The bundled socket-storm workload (traces/samples/workloads.py sockets) under memory.max 8M and
# memory.high 4M in a lab kernel, watched every EVERY seconds (default 2) for at most 600 s: its
# progress (OUT/progress.txt), the memcg's usage, memory.events, memory.stat, PSI, and where each
# of its tasks sleeps (OUT/samples.txt); at the end its wall time and memcg files (OUT/result.txt).
# The sampler runs in the root memcg: its reads charge no per-CPU stock of the workload's. With a
# second argument (a size, e.g. 64M) the guest first gets a zram swap device that big, so reclaim
# can take anon pages too (zram keeps them compressed in memory no memcg is charged for). Inside a
# lab kernel:
#   python -m lab run --kernel 6.12 --timeout 1200 --keep DIR -- sh benchmarks/socket_storm_probe.sh {run}/out [64M]
out=$1; swap=$2; mkdir -p $out
echo $$ > /sys/fs/cgroup/cgroup.procs
if [ -n "$swap" ]; then
  modprobe zram num_devices=1 && echo $swap > /sys/block/zram0/disksize && mkswap /dev/zram0 > /dev/null &&
    swapon /dev/zram0 || exit 1
  trap 'swapoff /dev/zram0' EXIT
  cat /proc/swaps > $out/swaps.txt
fi
cg=/sys/fs/cgroup/lab/workloads/storm-$$
mkdir $cg || exit 1
echo 8M > $cg/memory.max; echo 4M > $cg/memory.high
cat > $out/storm.py <<'PY'
import sys, time, tempfile, shutil
sys.path.insert(0, "traces/samples")
import workloads as w
d = tempfile.mkdtemp(prefix="probe-", dir="/var/tmp")
log = open(sys.argv[1], "a", buffering=1)
t0 = time.monotonic()
log.write(f"start {d}\n")
w.fill_page_cache(d)
log.write(f"{time.monotonic() - t0:.2f} cache filled\n")
w.socket_storm(6000, lambda made: log.write(f"{time.monotonic() - t0:.2f} sockets {made}\n"))
log.write(f"{time.monotonic() - t0:.2f} done\n")
shutil.rmtree(d)
PY
df /var/tmp > $out/df.txt; mount | grep -E " / | /var/tmp | /tmp " >> $out/df.txt
start=$(date +%s)
sh -c "echo \$\$ > $cg/cgroup.procs; exec python3 $out/storm.py $out/progress.txt" &
pid=$!
while kill -0 $pid 2>/dev/null; do
  now=$(date +%s)
  { echo "== $((now - start)) s current $(cat $cg/memory.current) swap $(cat $cg/memory.swap.current 2>/dev/null)"; tr '\n' ' ' < $cg/memory.events; echo
    grep -E "^(anon|file|kernel|kernel_stack|sock|shmem|slab|slab_reclaimable|slab_unreclaimable|percpu|pagetables|file_dirty|file_writeback) " $cg/memory.stat | tr '\n' ' '; echo
    grep -E "^(pgscan|pgsteal|pgactivate|pgdeactivate|workingset_refault_file) " $cg/memory.stat | tr '\n' ' '; echo
    cat $cg/memory.pressure | tr '\n' ' '; echo
    for t in $(cat $cg/cgroup.threads); do echo "task $t $(cat /proc/$t/wchan 2>/dev/null) | $(tr '\n' ';' < /proc/$t/stack 2>/dev/null)"; done
  } >> $out/samples.txt
  [ $((now - start)) -gt 600 ] && { kill -9 $(cat $cg/cgroup.procs) 2>/dev/null; echo "killed at 600 s" >> $out/samples.txt; }
  sleep ${EVERY:-2}
done
wait $pid
echo "seconds $(( $(date +%s) - start ))" > $out/result.txt
cat $cg/memory.events >> $out/result.txt
cat $cg/memory.stat >> $out/result.txt
rmdir $cg
