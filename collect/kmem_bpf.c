// chargeplay's eBPF capture program (compiled and attached with bcc by collect/bpf_loader.py,
// read by collect/ebpf.py).
//
// Uses only tracepoint arguments (args->field) and BPF helpers: no kernel struct layout,
// so one build of it works on any kernel with these tracepoints.
//
// Every event is one fixed-size `struct record` in a BPF ring buffer; collect/ebpf.py
// maps the ring buffer and reads whole batches with numpy. Filtering happens here:
//   - allocations, reclaim, syscall exits, OOM victims, renames: tasks in `tracked` only
//     (the workload's pids; a fork of a tracked task adds the child, its end removes it);
//   - frees: by a tracked task, or of an object a tracked task allocated (`objects`),
//     whoever frees it (RCU callbacks free the workload's objects from softirq);
//   - memcg stat events: the target memcg only (`config[0]`, its cgroup id, set by the
//     loader; 0 while the capture is off: then nothing is recorded).
// A record that finds the ring buffer full is counted in `counters[LOST]` (per CPU).
//
// Compile-time setting (cflags from collect/ebpf.py): RINGBUF_PAGES.

#define NAME_LEN 36
#ifndef TASK_COMM_LEN
#define TASK_COMM_LEN 16
#endif
#define PAGE_TAG (1ULL << 63)  // page frame numbers get their own key space in `objects`

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

// Counter slots (per CPU).
#define LOST 0             // records dropped: ring buffer full
#define OBJECTS_FULL 1     // workload objects not remembered: `objects` full

// 96 bytes; the ring buffer adds an 8-byte header. Field use per type: collect/ebpf.py.
struct record {
    u64 ts;        // bpf_ktime_get_ns(): CLOCK_MONOTONIC
    u64 a;         // call_site | memcg id | syscall id | pid (victim, child, exec, rename)
    u64 p;         // object pointer | pfn
    u64 b;         // bytes_req | val | nr_reclaimed
    u64 c;         // bytes_alloc
    u32 gfp;       // gfp flags | memcg item
    s32 pid;       // current thread id
    u16 type;      // T_*
    u16 cpu;
    s16 s;         // node | order
    u8 accounted;
    u8 pad;
    u32 name_loc;  // data_loc of `name`: (NAME_LEN << 16) | offset from the record start
    char name[NAME_LEN];  // slab cache | task name
};

BPF_RINGBUF_OUTPUT(records, RINGBUF_PAGES);
BPF_HASH(tracked, u32, u8, 65536);
BPF_HASH(objects, u64, u8, 262144);  // preallocated: updates and deletes stay cheap
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
    return target_memcg() != 0 && tracked.lookup(&tid) != NULL;
}

static __always_inline void count(int slot) {
    u64 *n = counters.lookup(&slot);
    if (n)
        (*n)++;
}

// A record in the ring buffer, or NULL (counted as lost) when it is full. Not zeroed (that
// costs a fifth of the capture's overhead): each probe sets every field its type uses
// (RECORD_TYPES in collect/ebpf.py), and unused bytes hold only earlier records' data.
static __always_inline struct record *reserve(u16 type) {
    struct record *r = records.ringbuf_reserve(sizeof(struct record));
    if (!r) {
        count(LOST);
        return NULL;
    }
    r->ts = bpf_ktime_get_ns();
    r->pid = current_tid();
    r->type = type;
    r->cpu = bpf_get_smp_processor_id();
    r->name_loc = (NAME_LEN << 16) | offsetof(struct record, name);
    return r;
}

static __always_inline void emit(struct record *r) {
    records.ringbuf_submit(r, 0);
}

static __always_inline void remember(u64 key) {
    u8 one = 1;
    if (key && objects.update(&key, &one) != 0)
        count(OBJECTS_FULL);
}

// A free is kept if a tracked task frees or the object is the workload's (then forgotten).
static __always_inline int wanted_free(u64 key) {
    if (target_memcg() == 0)
        return 0;
    int ours = objects.lookup(&key) != NULL;
    if (ours)
        objects.delete(&key);
    return ours || is_tracked(current_tid());
}

TRACEPOINT_PROBE(kmem, kmalloc) {
    if (!is_tracked(current_tid()))
        return 0;
    struct record *r = reserve(T_KMALLOC);
    if (!r)
        return 0;
    r->a = args->call_site;
    r->p = (u64)args->ptr;
    r->b = args->bytes_req;
    r->c = args->bytes_alloc;
    r->gfp = args->gfp_flags;
    r->s = args->node;
    remember(r->p);
    emit(r);
    return 0;
}

TRACEPOINT_PROBE(kmem, kmem_cache_alloc) {
    if (!is_tracked(current_tid()))
        return 0;
    struct record *r = reserve(T_KMEM_CACHE_ALLOC);
    if (!r)
        return 0;
    r->a = args->call_site;
    r->p = (u64)args->ptr;
    r->b = args->bytes_req;
    r->c = args->bytes_alloc;
    r->gfp = args->gfp_flags;
    r->s = args->node;
    r->accounted = args->accounted;
    TP_DATA_LOC_READ_STR(r->name, name, NAME_LEN);
    remember(r->p);
    emit(r);
    return 0;
}

TRACEPOINT_PROBE(kmem, kfree) {
    u64 ptr = (u64)args->ptr;
    if (ptr <= 16 || !wanted_free(ptr))  // kfree(NULL), kfree(ZERO_SIZE_PTR) free nothing
        return 0;
    struct record *r = reserve(T_KFREE);
    if (!r)
        return 0;
    r->a = args->call_site;
    r->p = ptr;
    emit(r);
    return 0;
}

TRACEPOINT_PROBE(kmem, kmem_cache_free) {
    u64 ptr = (u64)args->ptr;
    if (!wanted_free(ptr))
        return 0;
    struct record *r = reserve(T_KMEM_CACHE_FREE);
    if (!r)
        return 0;
    r->a = args->call_site;
    r->p = ptr;
    TP_DATA_LOC_READ_STR(r->name, name, NAME_LEN);
    emit(r);
    return 0;
}

TRACEPOINT_PROBE(kmem, mm_page_alloc) {
    if (!is_tracked(current_tid()))
        return 0;
    struct record *r = reserve(T_PAGE_ALLOC);
    if (!r)
        return 0;
    r->p = args->pfn;
    r->s = args->order;
    r->gfp = args->gfp_flags;
    if (r->p != ~0ULL)
        remember(r->p | PAGE_TAG);
    emit(r);
    return 0;
}

TRACEPOINT_PROBE(kmem, mm_page_free) {
    if (!wanted_free(args->pfn | PAGE_TAG))
        return 0;
    struct record *r = reserve(T_PAGE_FREE);
    if (!r)
        return 0;
    r->p = args->pfn;
    r->s = args->order;
    emit(r);
    return 0;
}

#define MEMCG_PROBE(event, type)       \
TRACEPOINT_PROBE(memcg, event) {       \
    if (args->id != target_memcg())    \
        return 0;                      \
    struct record *r = reserve(type);  \
    if (!r)                            \
        return 0;                      \
    r->a = args->id;                   \
    r->gfp = args->item;               \
    r->b = (s64)args->val;             \
    emit(r);                           \
    return 0;                          \
}

MEMCG_PROBE(mod_memcg_state, T_MEMCG_STATE)
MEMCG_PROBE(mod_memcg_lruvec_state, T_MEMCG_LRUVEC_STATE)
MEMCG_PROBE(count_memcg_events, T_MEMCG_EVENT)

TRACEPOINT_PROBE(vmscan, mm_vmscan_memcg_reclaim_begin) {
    if (!is_tracked(current_tid()))
        return 0;
    struct record *r = reserve(T_RECLAIM_BEGIN);
    if (!r)
        return 0;
    r->s = args->order;
    r->gfp = args->gfp_flags;
    emit(r);
    return 0;
}

TRACEPOINT_PROBE(vmscan, mm_vmscan_memcg_reclaim_end) {
    if (!is_tracked(current_tid()))
        return 0;
    struct record *r = reserve(T_RECLAIM_END);
    if (!r)
        return 0;
    r->b = args->nr_reclaimed;
    emit(r);
    return 0;
}

TRACEPOINT_PROBE(raw_syscalls, sys_exit) {
    if (!is_tracked(current_tid()))
        return 0;
    struct record *r = reserve(T_SYS_EXIT);
    if (!r)
        return 0;
    r->a = args->id;
    emit(r);
    return 0;
}

TRACEPOINT_PROBE(oom, mark_victim) {
    if (!is_tracked(current_tid()))
        return 0;
    struct record *r = reserve(T_MARK_VICTIM);
    if (!r)
        return 0;
    r->a = args->pid;
    emit(r);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_fork) {
    u32 parent = args->parent_pid, child = args->child_pid;
    u8 one = 1;
    if (!is_tracked(parent))
        return 0;
    tracked.update(&child, &one);
    struct record *r = reserve(T_FORK);
    if (!r)
        return 0;
    r->a = child;
    TP_DATA_LOC_READ_STR(r->name, child_comm, NAME_LEN);
    emit(r);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exec) {
    if (!is_tracked(current_tid()))
        return 0;
    struct record *r = reserve(T_EXEC);
    if (!r)
        return 0;
    r->a = args->pid;
    bpf_get_current_comm(r->name, TASK_COMM_LEN);  // exec has named the task already
    emit(r);
    return 0;
}

TRACEPOINT_PROBE(task, task_rename) {
    if (!is_tracked(current_tid()))
        return 0;
    struct record *r = reserve(T_RENAME);
    if (!r)
        return 0;
    r->a = args->pid;
    bpf_probe_read_kernel(r->name, TASK_COMM_LEN, args->newcomm);
    emit(r);
    return 0;
}

// A task is followed until its task_struct goes (like tracefs's event-fork pid list): the
// exiting task still frees its files, mm and the like after sched_process_exit.
TRACEPOINT_PROBE(sched, sched_process_free) {
    u32 tid = args->pid;
    tracked.delete(&tid);
    return 0;
}

// Charge attempts, where the kernel allows a kprobe on try_charge_memcg (attached by
// collect/ebpf.py only if it can; refused on kernels without kprobes).
int on_try_charge(struct pt_regs *ctx) {
    return 0;
}
