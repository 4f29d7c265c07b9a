// chargeplay's eBPF capture program (compiled and attached with bcc by collect/bpf_loader.py,
// read by collect/ebpf.py).
//
// The slab events (kmalloc, kmem_cache_alloc, kfree, kmem_cache_free: three quarters of a
// kmem trace) are raw tracepoints: their programs get the tracepoint's arguments as they
// are, at about half the cost of a classic tracepoint program, which first builds the
// tracefs record. Everything else is a classic tracepoint (args->field). The one kernel
// struct read is `struct kmem_cache`, at offsets the loader takes from the running
// kernel's BTF (KMEM_CACHE_*): no kernel header layout is compiled in.
//
// Output: fixed-size records, in a BPF ring buffer (or per-CPU perf buffers, PERF_OUTPUT,
// on kernels before 5.8), drained in batches with numpy by polling (no wakeups: a wakeup
// per record costs more than the record). Two outputs, so the frequent records stay one
// cache line: `records` (struct record, 56 bytes) and `named` (struct named_record, a
// record with a name: slab caches, forks, execs, renames). A record that finds its output
// full is counted in counters[LOST] (per CPU).
//
// A slab cache is named once: the first event of a cache (per slot of the direct-mapped
// `caches`) sends a T_CACHE named record with the cache's name, sizes and flags, keyed by
// its address; slab records carry that key, which collect/ebpf.py turns into the cache
// name in memory (it is never stored).
//
// Filtering happens here:
//   - allocations, reclaim, syscall exits, OOM victims, renames: tasks in `tracked` only
//     (the workload's thread ids; a fork of a tracked task adds the child, its end removes it);
//   - frees: by a tracked task, or of an object a tracked task allocated (`objects`),
//     whoever frees it (RCU callbacks free the workload's objects from softirq);
//   - memcg stat events: the target memcg only (`config[0]`, its cgroup id, set by the
//     collector; 0 while the capture is off: then nothing is recorded).
// Both filters are arrays, not hash maps: an array lookup is a few instructions, while a
// hash map update cost about 300 ns per allocation here (a quarter of the capture's cost).
//   - `tracked` has a slot per possible thread id (PID_MAX, /proc/sys/kernel/pid_max);
//   - `objects` works like a 2-way set-associative CPU cache: an object's address picks a
//     pair of slots, and an allocation whose pair holds two other live objects evicts the
//     older (counted in counters[OBJECTS_EVICTED]): a later free of the evicted object by
//     another task (only frees by other tasks need the table) is then not recorded.
//
// Compile-time settings (cflags from collect/ebpf.py): PERF_OUTPUT or RINGBUF_PAGES and
// NAMED_RINGBUF_PAGES, PID_MAX, OBJECT_SLOTS_LOG2, KMEM_CACHE_{NAME,OBJECT_SIZE,SIZE,FLAGS}.

#include <uapi/linux/ptrace.h>  // struct pt_regs, the charge probes' registers: user ABI, stable

#define NAME_LEN 36
#ifndef TASK_COMM_LEN
#define TASK_COMM_LEN 16
#endif
#define PAGE_TAG (1ULL << 63)  // page frame numbers get their own key space in `objects`
#define CACHE_SLOTS 1024

// Record type ids (collect/ebpf.py: RECORD_TYPES).
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

// Counter slots (per CPU).
#define LOST 0             // records dropped: output full
#define OBJECTS_EVICTED 1  // workload objects forgotten: their `objects` slots were taken

// 56 bytes; the ring buffer adds an 8-byte header: one 64-byte cache line. Field use per
// type: RECORD_TYPES in collect/ebpf.py.
struct record {
    u64 ts;        // bpf_ktime_get_ns(): CLOCK_MONOTONIC
    u64 a;         // call_site | memcg id | syscall id | pid (victim, child, exec, rename) | cache key
    u64 p;         // object pointer | pfn
    u64 k;         // slab cache key (its address, never stored)
    u32 b;         // bytes_req | val | nr_reclaimed | object_size
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

#ifdef PERF_OUTPUT
BPF_PERF_OUTPUT(records);
BPF_PERF_OUTPUT(named);
#else
BPF_RINGBUF_OUTPUT(records, RINGBUF_PAGES);
BPF_RINGBUF_OUTPUT(named, NAMED_RINGBUF_PAGES);
#endif

BPF_ARRAY(tracked, u8, PID_MAX);
BPF_ARRAY(objects, u64, 1 << OBJECT_SLOTS_LOG2);
BPF_ARRAY(caches, u64, CACHE_SLOTS);
BPF_PERCPU_ARRAY(counters, u64, 2);
BPF_ARRAY(config, u64, 1);

// The target memcg's cgroup id, or 0 when the capture is off.
static __always_inline u64 target_memcg(void) {
    int zero = 0;
    u64 *id = config.lookup(&zero);
    return id ? *id : 0;
}

static __always_inline u32 current_tid(void) {
    return (u32)bpf_get_current_pid_tgid();
}

static __always_inline int is_tracked(u32 tid) {
    u8 *yes = tracked.lookup(&tid);
    return yes && *yes && target_memcg() != 0;
}

static __always_inline void set_tracked(u32 tid, u8 yes) {
    u8 *slot = tracked.lookup(&tid);
    if (slot)
        *slot = yes;
}

static __always_inline void count(int slot) {
    u64 *n = counters.lookup(&slot);
    if (n)
        (*n)++;
}

static __always_inline void stamp(struct record *r, u16 type) {
    r->ts = bpf_ktime_get_ns();
    r->pid = current_tid();
    r->type = type;
    r->cpu = bpf_get_smp_processor_id();
}

// (bcc allows map calls in functions only, not in macros.)
static __always_inline void emit(void *ctx, struct record *r) {
#ifdef PERF_OUTPUT
    int failed = records.perf_submit(ctx, r, sizeof(*r));
#else
    int failed = records.ringbuf_output(r, sizeof(*r), BPF_RB_NO_WAKEUP);
#endif
    if (failed)
        count(LOST);
}

static __always_inline void emit_named(void *ctx, struct named_record *n) {
    n->name_loc = (NAME_LEN << 16) | offsetof(struct named_record, name);
#ifdef PERF_OUTPUT
    int failed = named.perf_submit(ctx, n, sizeof(*n));
#else
    int failed = named.ringbuf_output(n, sizeof(*n), BPF_RB_NO_WAKEUP);
#endif
    if (failed)
        count(LOST);
}

// The pair of `objects` slots an address may occupy (Fibonacci hashing: the top bits of
// key * 2^64/phi pick the pair).
static __always_inline u32 object_set(u64 key) {
    return ((key * 0x9E3779B97F4A7C15ULL) >> (64 - OBJECT_SLOTS_LOG2)) & ~1U;
}

static __always_inline void remember(u64 key) {
    u32 index = object_set(key), other = index + 1;
    u64 *first = objects.lookup(&index), *second = objects.lookup(&other);
    if (!first || !second || !key)
        return;
    if (*first == 0 || *first == key) {
        *first = key;
    } else if (*second == 0 || *second == key) {
        *second = key;
    } else {
        count(OBJECTS_EVICTED);
        *second = *first;  // the older one goes: the pair keeps the newest two
        *first = key;
    }
}

// Whether the workload allocated this object (and it is not freed yet); forgets it.
static __always_inline int forget(u64 key) {
    u32 index = object_set(key), other = index + 1;
    u64 *first = objects.lookup(&index), *second = objects.lookup(&other);
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

// A free is kept if a tracked task frees or the object is the workload's.
static __always_inline int wanted_free(u64 key) {
    if (target_memcg() == 0)
        return 0;
    return forget(key) || is_tracked(current_tid());
}

// Sends the cache's T_CACHE record unless its slot in `caches` says it was sent.
static __always_inline void name_cache(void *ctx, u64 cache) {
    u32 index = (cache * 0x9E3779B97F4A7C15ULL) >> 54;  // 10 bits: CACHE_SLOTS
    u64 *slot = caches.lookup(&index);
    if (!slot || *slot == cache)
        return;
    struct named_record n = {};
    const char *name = NULL;
    stamp(&n.r, T_CACHE);
    n.r.a = cache;
    bpf_probe_read_kernel(&n.r.b, 4, (void *)(cache + KMEM_CACHE_OBJECT_SIZE));
    bpf_probe_read_kernel(&n.r.c, 4, (void *)(cache + KMEM_CACHE_SIZE));
    bpf_probe_read_kernel(&n.r.gfp, 4, (void *)(cache + KMEM_CACHE_FLAGS));
    bpf_probe_read_kernel(&name, sizeof(name), (void *)(cache + KMEM_CACHE_NAME));
    bpf_probe_read_kernel_str(n.name, NAME_LEN, name);
    emit_named(ctx, &n);
    *slot = cache;  // after the record: a record that finds the slot set comes later
}

// kmalloc(call_site, ptr, bytes_req, bytes_alloc, gfp_flags, node)
RAW_TRACEPOINT_PROBE(kmalloc) {
    if (!is_tracked(current_tid()))
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
RAW_TRACEPOINT_PROBE(kmem_cache_alloc) {
    if (!is_tracked(current_tid()))
        return 0;
    struct record r = {};
    stamp(&r, T_KMEM_CACHE_ALLOC);
    r.a = ctx->args[0];
    r.p = ctx->args[1];
    r.k = ctx->args[2];
    r.gfp = ctx->args[3];
    r.s = ctx->args[4];
    name_cache(ctx, r.k);
    remember(r.p);
    emit(ctx, &r);
    return 0;
}

// kfree(call_site, ptr)
RAW_TRACEPOINT_PROBE(kfree) {
    u64 ptr = ctx->args[1];
    if (ptr <= 16 || !wanted_free(ptr))  // kfree(NULL), kfree(ZERO_SIZE_PTR) free nothing
        return 0;
    struct record r = {};
    stamp(&r, T_KFREE);
    r.a = ctx->args[0];
    r.p = ptr;
    emit(ctx, &r);
    return 0;
}

// kmem_cache_free(call_site, ptr, const struct kmem_cache *s)
RAW_TRACEPOINT_PROBE(kmem_cache_free) {
    u64 ptr = ctx->args[1];
    if (!wanted_free(ptr))
        return 0;
    struct record r = {};
    stamp(&r, T_KMEM_CACHE_FREE);
    r.a = ctx->args[0];
    r.p = ptr;
    r.k = ctx->args[2];
    name_cache(ctx, r.k);
    emit(ctx, &r);
    return 0;
}

TRACEPOINT_PROBE(kmem, mm_page_alloc) {
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

TRACEPOINT_PROBE(kmem, mm_page_free) {
    if (!wanted_free(args->pfn | PAGE_TAG))
        return 0;
    struct record r = {};
    stamp(&r, T_PAGE_FREE);
    r.p = args->pfn;
    r.s = args->order;
    emit(args, &r);
    return 0;
}

#define MEMCG_PROBE(event, type)       \
TRACEPOINT_PROBE(memcg, event) {       \
    if (args->id != target_memcg())    \
        return 0;                      \
    struct record r = {};              \
    stamp(&r, type);                   \
    r.a = args->id;                    \
    r.gfp = args->item;                \
    r.b = args->val;                   \
    emit(args, &r);                    \
    return 0;                          \
}

MEMCG_PROBE(mod_memcg_state, T_MEMCG_STATE)
MEMCG_PROBE(mod_memcg_lruvec_state, T_MEMCG_LRUVEC_STATE)
MEMCG_PROBE(count_memcg_events, T_MEMCG_EVENT)

TRACEPOINT_PROBE(vmscan, mm_vmscan_memcg_reclaim_begin) {
    if (!is_tracked(current_tid()))
        return 0;
    struct record r = {};
    stamp(&r, T_RECLAIM_BEGIN);
    r.s = args->order;
    r.gfp = args->gfp_flags;
    emit(args, &r);
    return 0;
}

TRACEPOINT_PROBE(vmscan, mm_vmscan_memcg_reclaim_end) {
    if (!is_tracked(current_tid()))
        return 0;
    struct record r = {};
    stamp(&r, T_RECLAIM_END);
    r.b = args->nr_reclaimed;
    emit(args, &r);
    return 0;
}

TRACEPOINT_PROBE(raw_syscalls, sys_exit) {
    if (!is_tracked(current_tid()))
        return 0;
    struct record r = {};
    stamp(&r, T_SYS_EXIT);
    r.a = args->id;
    emit(args, &r);
    return 0;
}

TRACEPOINT_PROBE(oom, mark_victim) {
    if (!is_tracked(current_tid()))
        return 0;
    struct record r = {};
    stamp(&r, T_MARK_VICTIM);
    r.a = args->pid;
    emit(args, &r);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_fork) {
    u32 parent = args->parent_pid, child = args->child_pid;
    if (!is_tracked(parent))
        return 0;
    set_tracked(child, 1);
    struct named_record n = {};
    stamp(&n.r, T_FORK);
    n.r.a = child;
    TP_DATA_LOC_READ_STR(n.name, child_comm, NAME_LEN);
    emit_named(args, &n);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exec) {
    if (!is_tracked(current_tid()))
        return 0;
    struct named_record n = {};
    stamp(&n.r, T_EXEC);
    n.r.a = args->pid;
    bpf_get_current_comm(n.name, TASK_COMM_LEN);  // exec has named the task already
    emit_named(args, &n);
    return 0;
}

TRACEPOINT_PROBE(task, task_rename) {
    if (!is_tracked(current_tid()))
        return 0;
    struct named_record n = {};
    stamp(&n.r, T_RENAME);
    n.r.a = args->pid;
    bpf_probe_read_kernel(n.name, TASK_COMM_LEN, args->newcomm);
    emit_named(args, &n);
    return 0;
}

// A task is followed until its task_struct goes (like tracefs's event-fork pid list): the
// exiting task still frees its files, mm and the like after sched_process_exit.
TRACEPOINT_PROBE(sched, sched_process_free) {
    set_tracked(args->pid, 0);
    return 0;
}

// Charge probes, attached by collect/bpf_loader.py only where the kernel allows kprobes
// (refused on kernels without them): each call of try_charge_memcg, of
// __mem_cgroup_handle_over_high and of mem_cgroup_out_of_memory by a tracked task becomes a
// T_CHARGE record (a = CHARGE_*; gfp; b = pages, or the order for the OOM; s = the result:
// try_charge_memcg's return value, out_of_memory's bool), written and stamped when the call
// returns (a stamp from the entry could be older than records already drained).
#define CHARGE_TRY 0
#define CHARGE_OVER_HIGH 1
#define CHARGE_OOM 2

struct mem_cgroup;
BPF_HASH(charging, u32, struct record, 4096);  // a tracked thread's call in progress

static __always_inline int charge_entry(u32 function, u32 gfp, u32 pages) {
    u32 tid = current_tid();
    if (!is_tracked(tid))
        return 0;
    struct record r = {};
    stamp(&r, T_CHARGE);
    r.a = function;
    r.gfp = gfp;
    r.b = pages;
    charging.update(&tid, &r);
    return 0;
}

static __always_inline int charge_return(struct pt_regs *ctx, s16 result) {
    u32 tid = current_tid();
    struct record *r = charging.lookup(&tid);
    if (!r)
        return 0;
    struct record done = *r;
    charging.delete(&tid);
    done.ts = bpf_ktime_get_ns();
    done.s = result;
    emit(ctx, &done);
    return 0;
}

int on_try_charge(struct pt_regs *ctx, struct mem_cgroup *memcg, gfp_t gfp_mask, unsigned int nr_pages) {
    return charge_entry(CHARGE_TRY, gfp_mask, nr_pages);
}

int on_try_charge_return(struct pt_regs *ctx) {
    return charge_return(ctx, PT_REGS_RC(ctx));
}

int on_handle_over_high(struct pt_regs *ctx, gfp_t gfp_mask) {
    return charge_entry(CHARGE_OVER_HIGH, gfp_mask, 0);
}

int on_handle_over_high_return(struct pt_regs *ctx) {
    return charge_return(ctx, 0);
}

int on_out_of_memory(struct pt_regs *ctx, struct mem_cgroup *memcg, gfp_t gfp_mask, int order) {
    return charge_entry(CHARGE_OOM, gfp_mask, order);
}

int on_out_of_memory_return(struct pt_regs *ctx) {
    return charge_return(ctx, PT_REGS_RC(ctx) & 1);
}
