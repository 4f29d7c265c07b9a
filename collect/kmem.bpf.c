// chargeplay's eBPF capture program: a CO-RE object built once (`make bpf`: clang and
// libbpf-dev, only where it is built) and loaded with libbpf by collect/bpf_loader.py, read by
// collect/ebpf.py.
//
// No kernel header is compiled in. The few kernel structs read are declared below with only
// the members read, `preserve_access_index`: libbpf finds each member by name in the running
// kernel's BTF and relocates its offset when it loads the program (CO-RE). So one object runs
// on every kernel from 6.1 (the slab tracepoints pass the cache since then) whatever its
// layout: struct kmem_cache, task_struct, and the tracefs records of the classic tracepoints
// (trace_event_raw_*, which also move, e.g. sched's comm became a __data_loc after 6.1).
//
// The slab events (kmalloc, kmem_cache_alloc, kfree, kmem_cache_free: three quarters of a
// kmem trace), forks and frees of tasks are raw tracepoints: their programs get the
// tracepoint's arguments as they are (positions: TP_PROTO, the same from 6.1 to 6.18; the
// loader checks them in the kernel's BTF), at about half the cost of a classic tracepoint
// program, which first builds the tracefs record. The rest are classic tracepoints.
//
// Output: fixed-size records, in a BPF ring buffer (or per-CPU perf buffers when
// settings.perf_output), drained in batches with numpy by polling (no wakeups: a wakeup per
// record costs more than the record). Two outputs, so the frequent records stay one cache
// line: `records` (struct record, 56 bytes) and `named` (struct named_record, a record with a
// name: slab caches, forks, execs, renames). A record that finds its output full is counted
// in counters[LOST] (per CPU).
//
// A slab cache is named once: the first event of a cache (while it holds a slot of
// `caches`) sends a T_CACHE named record with the cache's name, sizes and flags, keyed by its
// address; slab records carry that key, which collect/ebpf.py turns into the cache name in
// memory (it is never stored).
//
// Filtering happens here:
//   - allocations, reclaim, syscall exits, OOM victims, renames: tasks in `tracked` only
//     (the workload's thread ids; a fork of a tracked task adds the child, its end removes it);
//   - slab allocations: only those memcg charges (the tracepoints' `accounted`: __GFP_ACCOUNT,
//     or a SLAB_ACCOUNT cache), unless `settings.all_allocations`: under a storm most slab
//     allocations are not accounted, and replay and analysis need only the accounted ones;
//   - frees: of an object a tracked task allocated (`objects`), whoever frees it (RCU
//     callbacks free the workload's objects from softirq), or by a tracked task; but a tracked
//     task's slab free is left out when its object is not in `objects` and its cache can hold
//     no object the trace charged (neither SLAB_ACCOUNT nor a recorded allocation from it in
//     `caches`): that object's allocation is not in the trace (unaccounted, or from before
//     the capture), so replay and analysis have no use for its free (an open() frees a
//     names_cache and an lsm_file_cache object, never accounted: a fifth of the events of
//     benchmarks/capture_overhead.py). With `settings.all_allocations` a tracked task's
//     frees are all kept;
//   - memcg stat events: the target memcg and memcgs made after it (`config[0]`, its cgroup
//     id, set by the collector; cgroup ids only grow, so the memcgs its workload makes below
//     it pass, and user space keeps the target's subtree; 0 while the capture is off: then
//     nothing is recorded).
// Both filters are arrays, not hash maps: an array lookup is a few instructions, while a
// hash map update cost about 300 ns per allocation here (a quarter of the capture's cost).
//   - `tracked` has a slot per possible thread id (max_entries: /proc/sys/kernel/pid_max);
//   - `objects` works like a 2-way set-associative CPU cache: an object's address picks a
//     pair of slots, and an allocation whose pair holds two other live objects evicts the
//     older (counted in counters[OBJECTS_EVICTED]): a later free of the evicted object by
//     another task (only frees by other tasks need the table) is then not recorded.
//
// Set by the loader before load: `settings` (read-only data: the verifier drops the branches
// not taken) and the maps' max_entries. Programs are named cp_* (the loader and the tests
// know chargeplay's programs by that prefix).

#include <linux/bpf.h>
#include <linux/types.h>
#include <asm/ptrace.h>  // struct pt_regs, the charge probes' registers: user ABI, stable
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

typedef __u8 u8;
typedef __u16 u16;
typedef __s16 s16;
typedef __u32 u32;
typedef __s32 s32;
typedef __u64 u64;

#define NAME_LEN 36
#define TASK_COMM_LEN 16
#define PAGE_TAG (1ULL << 63)  // page frame numbers get their own key space in `objects`
#define CACHE_SLOTS 1024
#define CLONE_VM 0x100  // include/uapi/linux/sched.h
#define CLONE_THREAD 0x10000

// Record type ids (collect/ebpf_records.py: RECORD_TYPES).
#define T_KMALLOC 1
#define T_KMEM_CACHE_ALLOC 2
#define T_KFREE 3
#define T_KMEM_CACHE_FREE 4
#define T_PAGE_ALLOC 5
#define T_PAGE_FREE 6
#define T_MEMCG_STATE 7
#define T_MEMCG_LRUVEC_STATE 8
#define T_MEMCG_EVENT 9
#define T_RECLAIM_BEGIN 10
#define T_RECLAIM_END 11
#define T_SYS_EXIT 12
#define T_MARK_VICTIM 13
#define T_FORK 14
#define T_EXEC 15
#define T_RENAME 16
#define T_CACHE 17
#define T_CHARGE 18
#define T_EXIT 19

// Counter slots (per CPU).
#define LOST 0             // records dropped: output full
#define OBJECTS_EVICTED 1  // workload objects forgotten: their `objects` slots were taken

// The kernel's structs, only the members read; offsets come from the running kernel's BTF.
#define KERNEL_STRUCT __attribute__((preserve_access_index))
struct kmem_cache { const char *name; unsigned int object_size, size, flags; } KERNEL_STRUCT;
struct mm_struct;
struct task_struct { int pid; int tgid; struct mm_struct *mm; char comm[TASK_COMM_LEN]; } KERNEL_STRUCT;
struct trace_event_raw_mm_page_alloc { unsigned long pfn; unsigned int order; unsigned long gfp_flags; } KERNEL_STRUCT;
struct trace_event_raw_mm_page_free { unsigned long pfn; unsigned int order; } KERNEL_STRUCT;
struct kernfs_node { u64 id; } KERNEL_STRUCT;
struct cgroup { struct kernfs_node *kn; } KERNEL_STRUCT;
struct cgroup_subsys_state { struct cgroup *cgroup; } KERNEL_STRUCT;
struct mem_cgroup { struct cgroup_subsys_state css; } KERNEL_STRUCT;
struct trace_event_raw_mm_vmscan_direct_reclaim_begin_template { int order; unsigned long gfp_flags; } KERNEL_STRUCT;
struct trace_event_raw_mm_vmscan_direct_reclaim_end_template { unsigned long nr_reclaimed; } KERNEL_STRUCT;
struct trace_event_raw_sys_exit { long id; } KERNEL_STRUCT;
struct trace_event_raw_mark_victim { int pid; } KERNEL_STRUCT;
struct trace_event_raw_sched_process_exec { int pid; } KERNEL_STRUCT;
struct trace_event_raw_task_rename { int pid; char newcomm[TASK_COMM_LEN]; } KERNEL_STRUCT;

// 56 bytes; the ring buffer adds an 8-byte header: one 64-byte cache line. Field use per
// type: RECORD_TYPES in collect/ebpf_records.py.
struct record {
    u64 ts;        // bpf_ktime_get_ns(): CLOCK_MONOTONIC
    u64 a;         // call_site | memcg id | syscall id | pid (victim, child, exec, rename, exit) | cache key
    u64 p;         // object pointer | pfn
    u64 k;         // slab cache key (its address, never stored)
    u32 b;         // bytes_req | val | nr_reclaimed | object_size | clone flags
    u32 c;         // bytes_alloc | size
    u32 gfp;       // gfp flags | memcg item | cache flags
    s32 pid;       // current thread id
    u16 type;      // T_*
    u16 cpu;
    s16 s;         // node | order
    u16 pad;
};

struct named_record {
    struct record r;
    u32 name_loc;  // data_loc of `name`: (NAME_LEN << 16) | offset from the record start
    char name[NAME_LEN];  // slab cache | task name
};

// Set by the loader before load (collect/bpf_loader.py: Settings).
const volatile struct {
    u32 perf_output;        // 1: per-CPU perf buffers (*_perf), else ring buffers (*_ring)
    u32 object_slots_log2;  // log2 of `objects`' max_entries
    u32 gfp_account;        // __GFP_ACCOUNT, this kernel's
    u32 slab_account;       // SLAB_ACCOUNT in struct kmem_cache's flags, this kernel's
    u32 all_allocations;    // 1: every slab allocation of the workload, accounted or not
} settings = {};

// The loader sizes each ring buffer (max_entries, bytes) and each array before load.
struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 4096); } records_ring SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 4096); } named_ring SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY); __type(key, u32); __type(value, u32); } records_perf SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY); __type(key, u32); __type(value, u32); } named_perf SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, u32); __type(value, u8); } tracked SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, u32); __type(value, u64); } objects SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, u32); __type(value, u8); } evicted SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, CACHE_SLOTS); __type(key, u32); __type(value, u64); } caches SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, 2); __type(key, u32); __type(value, u64); } counters SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, u32); __type(value, u64); } config SEC(".maps");

// The target memcg's cgroup id, or 0 when the capture is off.
static __always_inline u64 target_memcg(void) {
    u32 zero = 0;
    u64 *id = bpf_map_lookup_elem(&config, &zero);
    return id ? *id : 0;
}

static __always_inline u32 current_tid(void) {
    return (u32)bpf_get_current_pid_tgid();
}

static __always_inline int is_tracked(u32 tid) {
    u8 *yes = bpf_map_lookup_elem(&tracked, &tid);
    return yes && *yes && target_memcg() != 0;
}

static __always_inline void set_tracked(u32 tid, u8 yes) {
    u8 *slot = bpf_map_lookup_elem(&tracked, &tid);
    if (slot)
        *slot = yes;
}

static __always_inline void count(u32 slot) {
    u64 *n = bpf_map_lookup_elem(&counters, &slot);
    if (n)
        (*n)++;
}

static __always_inline void stamp(struct record *r, u16 type) {
    r->ts = bpf_ktime_get_ns();
    r->pid = current_tid();
    r->type = type;
    r->cpu = bpf_get_smp_processor_id();
}

static __always_inline void output(void *ctx, void *ring, void *perf, void *data, u64 size) {
    long failed = settings.perf_output ? bpf_perf_event_output(ctx, perf, BPF_F_CURRENT_CPU, data, size)
                                       : bpf_ringbuf_output(ring, data, size, BPF_RB_NO_WAKEUP);
    if (failed)
        count(LOST);
}

static __always_inline void emit(void *ctx, struct record *r) {
    output(ctx, &records_ring, &records_perf, r, sizeof(*r));
}

static __always_inline void emit_named(void *ctx, struct named_record *n) {
    n->name_loc = (NAME_LEN << 16) | __builtin_offsetof(struct named_record, name);
    output(ctx, &named_ring, &named_perf, n, sizeof(*n));
}

// The pair of `objects` slots an address may occupy (Fibonacci hashing: the top bits of
// key * 2^64/phi pick the pair).
static __always_inline u32 object_set(u64 key) {
    return ((key * 0x9E3779B97F4A7C15ULL) >> (64 - settings.object_slots_log2)) & ~1U;
}

static __always_inline void remember(u64 key) {
    u32 index = object_set(key), other = index + 1;
    u64 *first = bpf_map_lookup_elem(&objects, &index), *second = bpf_map_lookup_elem(&objects, &other);
    if (!first || !second || !key)
        return;
    if (*first == 0 || *first == key) {
        *first = key;
    } else if (*second == 0 || *second == key) {
        *second = key;
    } else {
        count(OBJECTS_EVICTED);
        u32 pair = index / 2;
        u8 *mark = bpf_map_lookup_elem(&evicted, &pair);
        if (mark)
            *mark = 1;
        *second = *first;  // the older one goes: the pair keeps the newest two
        *first = key;
    }
}

// Whether an object of this address may have been the workload's and been forgotten: its pair
// of slots has lost an object to a newer one since the capture began.
static __always_inline int may_be_evicted(u64 key) {
    u32 pair = object_set(key) / 2;
    u8 *mark = bpf_map_lookup_elem(&evicted, &pair);
    return mark && *mark;
}

// Whether the workload allocated this object (and it is not freed yet); forgets it.
static __always_inline int forget(u64 key) {
    u32 index = object_set(key), other = index + 1;
    u64 *first = bpf_map_lookup_elem(&objects, &index), *second = bpf_map_lookup_elem(&objects, &other);
    if (first && *first == key) {
        *first = 0;
        return 1;
    }
    if (second && *second == key) {
        *second = 0;
        return 1;
    }
    return 0;
}

// `caches` is 2-way set-associative, as `objects` is: a cache's key (its address, 8-byte
// aligned) picks a pair of slots. A slot holds the key of a cache whose T_CACHE record was
// sent, with CHARGED_FROM set once a recorded allocation came from it.
#define CHARGED_FROM 1ULL
static __always_inline u32 cache_set(u64 key) {
    return ((key * 0x9E3779B97F4A7C15ULL) >> 54) & ~1U;  // 10 bits: CACHE_SLOTS
}

// The slot that holds this cache, or NULL; `*room`: whether its pair still has an empty slot
// (slots are never emptied, so a cache whose pair has room has never had one).
static __always_inline u64 *find_cache(u64 key, int *room) {
    u32 index = cache_set(key), other = index + 1;
    u64 *first = bpf_map_lookup_elem(&caches, &index), *second = bpf_map_lookup_elem(&caches, &other);
    *room = 0;
    if (!first || !second)
        return 0;
    if ((*first & ~CHARGED_FROM) == key)
        return first;
    if ((*second & ~CHARGED_FROM) == key)
        return second;
    *room = *first == 0 || *second == 0;
    return 0;
}

// Sends the cache's T_CACHE record unless a slot in `caches` says it was sent; the slot that
// holds the cache then (NULL if the map gave none).
static __always_inline u64 *name_cache(void *ctx, struct kmem_cache *cache) {
    u64 key = (u64)cache;
    int room;
    u64 *held = find_cache(key, &room);
    if (held)
        return held;
    struct named_record n = {};
    stamp(&n.r, T_CACHE);
    n.r.a = key;
    n.r.b = BPF_CORE_READ(cache, object_size);
    n.r.c = BPF_CORE_READ(cache, size);
    n.r.gfp = BPF_CORE_READ(cache, flags);
    bpf_probe_read_kernel_str(n.name, NAME_LEN, BPF_CORE_READ(cache, name));
    emit_named(ctx, &n);
    // After the record: a record that finds the slot set comes later.
    u32 index = cache_set(key), other = index + 1;
    u64 *first = bpf_map_lookup_elem(&caches, &index), *second = bpf_map_lookup_elem(&caches, &other);
    if (!first || !second)
        return 0;
    if (*first == 0) {
        *first = key;
        return first;
    }
    if (*second == 0) {
        *second = key;
        return second;
    }
    // The older goes; the newcomer may have had a slot here before: charged, to be safe.
    *second = *first;
    *first = key | CHARGED_FROM;
    return first;
}

// Whether a recorded allocation may have come from this cache: one did, or it has no slot
// in a full pair (it may have had one). No slot in a pair with room: no event of this cache
// yet, so no recorded allocation either (an allocation names its cache first).
static __always_inline int charged_from(u64 key) {
    int room;
    u64 *slot = find_cache(key, &room);
    return slot ? (*slot & CHARGED_FROM) != 0 : !room;
}

// Whether a slab allocation is recorded: as the tracepoints' own `accounted` field says
// (kmalloc has no cache here: its accounted caches are chosen by __GFP_ACCOUNT).
static __always_inline int wanted_slab_alloc(u64 gfp, struct kmem_cache *cache) {
    if (settings.all_allocations || (gfp & settings.gfp_account))
        return 1;
    return cache && (BPF_CORE_READ(cache, flags) & settings.slab_account);
}

// kmalloc(call_site, ptr, bytes_req, bytes_alloc, gfp_flags, node)
SEC("raw_tp/kmalloc")
int cp_kmalloc(struct bpf_raw_tracepoint_args *ctx) {
    if (!is_tracked(current_tid()) || !wanted_slab_alloc(ctx->args[4], 0))
        return 0;
    struct record r = {};
    stamp(&r, T_KMALLOC);
    r.a = ctx->args[0];
    r.p = ctx->args[1];
    r.b = ctx->args[2];
    r.c = ctx->args[3];
    r.gfp = ctx->args[4];
    r.s = ctx->args[5];
    remember(r.p);
    emit(ctx, &r);
    return 0;
}

// kmem_cache_alloc(call_site, ptr, struct kmem_cache *s, gfp_flags, node)
SEC("raw_tp/kmem_cache_alloc")
int cp_kmem_cache_alloc(struct bpf_raw_tracepoint_args *ctx) {
    if (!is_tracked(current_tid()) || !wanted_slab_alloc(ctx->args[3], (struct kmem_cache *)ctx->args[2]))
        return 0;
    struct record r = {};
    stamp(&r, T_KMEM_CACHE_ALLOC);
    r.a = ctx->args[0];
    r.p = ctx->args[1];
    r.k = ctx->args[2];
    r.gfp = ctx->args[3];
    r.s = ctx->args[4];
    u64 *slot = name_cache(ctx, (struct kmem_cache *)r.k);
    if (slot)
        *slot |= CHARGED_FROM;
    remember(r.p);
    emit(ctx, &r);
    return 0;
}

// Whether a tracked task's slab free of an object not in `objects` is kept (above).
static __always_inline int may_be_charged(struct kmem_cache *cache) {
    return settings.all_allocations || (BPF_CORE_READ(cache, flags) & settings.slab_account) || charged_from((u64)cache);
}

// A free is kept if the object is the workload's (in `objects`), or a tracked task frees an
// object that may have been the workload's all the same: its pair of slots has lost one, and
// (from `cache`, a slab free; NULL: any free) the cache may hold what the trace charged. Any
// other object was never recorded: replay has no use for its free.
static __always_inline int wanted_free(u64 key, struct kmem_cache *cache) {
    if (target_memcg() == 0)
        return 0;
    return forget(key) || (is_tracked(current_tid()) && may_be_evicted(key) && (!cache || may_be_charged(cache)));
}

// kfree(call_site, ptr)
SEC("raw_tp/kfree")
int cp_kfree(struct bpf_raw_tracepoint_args *ctx) {
    u64 ptr = ctx->args[1];
    if (ptr <= 16 || !wanted_free(ptr, 0))  // kfree(NULL), kfree(ZERO_SIZE_PTR) free nothing
        return 0;
    struct record r = {};
    stamp(&r, T_KFREE);
    r.a = ctx->args[0];
    r.p = ptr;
    emit(ctx, &r);
    return 0;
}

// kmem_cache_free(call_site, ptr, const struct kmem_cache *s)
SEC("raw_tp/kmem_cache_free")
int cp_kmem_cache_free(struct bpf_raw_tracepoint_args *ctx) {
    u64 ptr = ctx->args[1];
    if (!wanted_free(ptr, (struct kmem_cache *)ctx->args[2]))
        return 0;
    struct record r = {};
    stamp(&r, T_KMEM_CACHE_FREE);
    r.a = ctx->args[0];
    r.p = ptr;
    r.k = ctx->args[2];
    name_cache(ctx, (struct kmem_cache *)r.k);
    emit(ctx, &r);
    return 0;
}

SEC("tracepoint/kmem/mm_page_alloc")
int cp_page_alloc(struct trace_event_raw_mm_page_alloc *args) {
    if (!is_tracked(current_tid()))
        return 0;
    struct record r = {};
    stamp(&r, T_PAGE_ALLOC);
    r.p = args->pfn;
    r.s = args->order;
    r.gfp = args->gfp_flags;
    if (r.p != ~0ULL)
        remember(r.p | PAGE_TAG);
    emit(args, &r);
    return 0;
}

SEC("tracepoint/kmem/mm_page_free")
int cp_page_free(struct trace_event_raw_mm_page_free *args) {
    if (!wanted_free(args->pfn | PAGE_TAG, 0))
        return 0;
    struct record r = {};
    stamp(&r, T_PAGE_FREE);
    r.p = args->pfn;
    r.s = args->order;
    emit(args, &r);
    return 0;
}

// The memcg stat tracepoints (Linux 6.14+): the loader loads these only where they exist.
// (memcg, item, val): raw tracepoints, as the kernel skips a raw tracepoint's program only
// within itself, a tracepoint's within any kprobe or tracepoint program (an uncharge in an
// interrupt while cp_sys_exit ran went unrecorded). The id is the tracepoints' own,
// cgroup_id(memcg->css.cgroup).
#define MEMCG_PROBE(event, type)                                                      \
SEC("raw_tp/" #event)                                                                 \
int cp_##event(struct bpf_raw_tracepoint_args *ctx) {                                 \
    u64 target = target_memcg();                                                      \
    if (target == 0)                                                                  \
        return 0;                                                                     \
    u64 id = BPF_CORE_READ((struct mem_cgroup *)ctx->args[0], css.cgroup, kn, id);    \
    if (id < target)                                                                  \
        return 0;                                                                     \
    struct record r = {};                                                             \
    stamp(&r, type);                                                                  \
    r.a = id;                                                                         \
    r.gfp = ctx->args[1];                                                             \
    r.b = ctx->args[2];                                                               \
    emit(ctx, &r);                                                                    \
    return 0;                                                                         \
}

MEMCG_PROBE(mod_memcg_state, T_MEMCG_STATE)
MEMCG_PROBE(mod_memcg_lruvec_state, T_MEMCG_LRUVEC_STATE)
MEMCG_PROBE(count_memcg_events, T_MEMCG_EVENT)

SEC("tracepoint/vmscan/mm_vmscan_memcg_reclaim_begin")
int cp_reclaim_begin(struct trace_event_raw_mm_vmscan_direct_reclaim_begin_template *args) {
    if (!is_tracked(current_tid()))
        return 0;
    struct record r = {};
    stamp(&r, T_RECLAIM_BEGIN);
    r.s = args->order;
    r.gfp = args->gfp_flags;
    emit(args, &r);
    return 0;
}

SEC("tracepoint/vmscan/mm_vmscan_memcg_reclaim_end")
int cp_reclaim_end(struct trace_event_raw_mm_vmscan_direct_reclaim_end_template *args) {
    if (!is_tracked(current_tid()))
        return 0;
    struct record r = {};
    stamp(&r, T_RECLAIM_END);
    r.b = args->nr_reclaimed;
    emit(args, &r);
    return 0;
}

SEC("tracepoint/raw_syscalls/sys_exit")
int cp_sys_exit(struct trace_event_raw_sys_exit *args) {
    if (!is_tracked(current_tid()))
        return 0;
    struct record r = {};
    stamp(&r, T_SYS_EXIT);
    r.a = args->id;
    emit(args, &r);
    return 0;
}

SEC("tracepoint/oom/mark_victim")
int cp_mark_victim(struct trace_event_raw_mark_victim *args) {
    if (!is_tracked(current_tid()))
        return 0;
    struct record r = {};
    stamp(&r, T_MARK_VICTIM);
    r.a = args->pid;
    emit(args, &r);
    return 0;
}

// sched_process_fork(struct task_struct *parent, struct task_struct *child)
SEC("raw_tp/sched_process_fork")
int cp_fork(struct bpf_raw_tracepoint_args *ctx) {
    struct task_struct *parent = (void *)ctx->args[0], *child = (void *)ctx->args[1];
    if (!is_tracked(BPF_CORE_READ(parent, pid)))
        return 0;
    u32 child_pid = BPF_CORE_READ(child, pid);
    set_tracked(child_pid, 1);
    struct named_record n = {};
    stamp(&n.r, T_FORK);
    n.r.a = child_pid;
    // The clone flags that decide what the child shares, read off the two tasks: the
    // tracepoint has none (tracefs records task:task_newtask, which has them).
    n.r.b = (BPF_CORE_READ(child, mm) == BPF_CORE_READ(parent, mm) ? CLONE_VM : 0)
          | (BPF_CORE_READ(child, tgid) == BPF_CORE_READ(parent, tgid) ? CLONE_THREAD : 0);
    BPF_CORE_READ_STR_INTO(&n.name, child, comm);
    emit_named(ctx, &n);
    return 0;
}

SEC("tracepoint/sched/sched_process_exec")
int cp_exec(struct trace_event_raw_sched_process_exec *args) {
    if (!is_tracked(current_tid()))
        return 0;
    struct named_record n = {};
    stamp(&n.r, T_EXEC);
    n.r.a = args->pid;
    bpf_get_current_comm(n.name, TASK_COMM_LEN);  // exec has named the task already
    emit_named(args, &n);
    return 0;
}

SEC("tracepoint/task/task_rename")
int cp_rename(struct trace_event_raw_task_rename *args) {
    if (!is_tracked(current_tid()))
        return 0;
    struct named_record n = {};
    stamp(&n.r, T_RENAME);
    n.r.a = args->pid;
    bpf_probe_read_kernel(n.name, TASK_COMM_LEN, args->newcomm);
    emit_named(args, &n);
    return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int cp_exit(void *args) {
    u32 tid = current_tid();
    if (!is_tracked(tid))
        return 0;
    struct record r = {};
    stamp(&r, T_EXIT);
    r.a = tid;
    emit(args, &r);
    return 0;
}

// A task is followed until its task_struct goes (like tracefs's event-fork pid list): the
// exiting task still frees its files, mm and the like after sched_process_exit.
// sched_process_free(struct task_struct *p)
SEC("raw_tp/sched_process_free")
int cp_task_free(struct bpf_raw_tracepoint_args *ctx) {
    set_tracked(BPF_CORE_READ((struct task_struct *)ctx->args[0], pid), 0);
    return 0;
}

// Charge probes, attached by collect/bpf_loader.py only where the kernel allows kprobes,
// each to the kernel's own name of its function (bpf_loader.CHARGE_PROBES): each call of
// try_charge_memcg, of (__)mem_cgroup_handle_over_high and of mem_cgroup_out_of_memory by a
// tracked task becomes a T_CHARGE record (a = CHARGE_*; gfp; b = pages, or the order for the
// OOM; s = the result: try_charge_memcg's return value, out_of_memory's bool), written and
// stamped when the call returns (a stamp from the entry could be older than records already
// drained). Their arguments, (memcg, gfp_mask, nr_pages), (gfp_mask) and (memcg, gfp_mask,
// order), are the same from 6.1 (Debian's, which has the gfp_mask of 6.5's over-high) to 6.18.
#define CHARGE_TRY 0
#define CHARGE_OVER_HIGH 1
#define CHARGE_OOM 2

struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 4096); __type(key, u32); __type(value, struct record); } charging SEC(".maps");

static __always_inline int charge_entry(u32 function, u32 gfp, u32 pages) {
    u32 tid = current_tid();
    if (!is_tracked(tid))
        return 0;
    struct record r = {};
    stamp(&r, T_CHARGE);
    r.a = function;
    r.gfp = gfp;
    r.b = pages;
    bpf_map_update_elem(&charging, &tid, &r, BPF_ANY);
    return 0;
}

static __always_inline int charge_return(struct pt_regs *ctx, s16 result) {
    u32 tid = current_tid();
    struct record *r = bpf_map_lookup_elem(&charging, &tid);
    if (!r)
        return 0;
    struct record done = *r;
    bpf_map_delete_elem(&charging, &tid);
    done.ts = bpf_ktime_get_ns();
    done.s = result;
    emit(ctx, &done);
    return 0;
}

SEC("kprobe")
int BPF_KPROBE(cp_try_charge, void *memcg, u32 gfp_mask, unsigned int nr_pages) {
    return charge_entry(CHARGE_TRY, gfp_mask, nr_pages);
}

SEC("kretprobe")
int BPF_KRETPROBE(cp_try_charge_ret, int ret) {
    return charge_return(ctx, ret);
}

SEC("kprobe")
int BPF_KPROBE(cp_over_high, u32 gfp_mask) {
    return charge_entry(CHARGE_OVER_HIGH, gfp_mask, 0);
}

SEC("kretprobe")
int BPF_KRETPROBE(cp_over_high_ret) {
    return charge_return(ctx, 0);
}

SEC("kprobe")
int BPF_KPROBE(cp_oom, void *memcg, u32 gfp_mask, int order) {
    return charge_entry(CHARGE_OOM, gfp_mask, order);
}

SEC("kretprobe")
int BPF_KRETPROBE(cp_oom_ret, long ret) {
    return charge_return(ctx, ret & 1);
}

char LICENSE[] SEC("license") = "GPL";
