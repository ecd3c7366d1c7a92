/*
 * The in-memory floor of rmtllmf's linear merge (benchmarks/bench_merge.py builds and runs it):
 * the merge kernel's own sums (this file includes src/rmtllmf/fusion/fast/_linear_kernel.c, so the
 * tiles, the prefetches and the AVX2 clones are the ones a merge runs) over the same inputs held
 * in the process's own memory instead of files. Jobs of KERNEL_CHUNK_BYTES of every input are
 * shared by the threads through an atomic counter as in the kernel; each output block of
 * OUT_ELEMS elements is summed into a buffer that stays in cache and copied into the output, as
 * the kernel's pwrite copies it into the page cache. What it leaves out is everything a merge
 * between files adds: page-cache lookups and faults, maps and unmaps, the file system's writes.
 * A merge between files can be no faster than this on the same machine at the same moment, so
 * the floor tells how much of a merge's distance to the copy-bandwidth bound is the file path's
 * and how much is the machine's: a core summing nine streams reads slower than a copy moves
 * bytes with non-temporal stores.
 *
 *   rmt_floor_prepare(n, count, dtype)  allocate n inputs and one output of `count` elements of
 *                                       dtype (kernel codes: 0 float32, 2 bfloat16), fill them
 *                                       (every page touched, huge pages asked for)
 *   rmt_floor_run(threads)              one merge of them on `threads` threads (the caller's and
 *                                       threads - 1 started), returns 0 or -errno
 *   rmt_floor_array(q)                  input q (0 .. n-1) or, for q = n, the output (tests read
 *                                       them to check that the floor computes the merge)
 */
#include "_linear_kernel.c"

#define FLOOR_JOB_BYTES ((int64_t)1 << 21) /* rmtllmf.fusion.fast.fused.KERNEL_CHUNK_BYTES */

static struct {
    int n, dtype;
    int64_t count, next;
    char *x[RMT_MAX_INPUTS];
    char *out;
    float wf[RMT_MAX_INPUTS];
} floor_state;

static char *floor_alloc(size_t bytes) {
    size_t size = (bytes + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
    char *p = aligned_alloc(HUGE_PAGE, size);
    if (p) {
#ifdef MADV_HUGEPAGE
        madvise(p, size, MADV_HUGEPAGE);
#endif
        memset(p, 0, size);
    }
    return p;
}

static void floor_release(void) {
    for (int q = 0; q < floor_state.n; q++) free(floor_state.x[q]);
    free(floor_state.out);
    memset(&floor_state, 0, sizeof floor_state);
}

int rmt_floor_prepare(int n, int64_t count, int dtype) {
    if (n < 2 || n > RMT_MAX_INPUTS || count < 1 || (dtype != RMT_F32 && dtype != RMT_BF16))
        return -EINVAL;
    floor_release();
    size_t size = itemsize(dtype);
    floor_state.dtype = dtype;
    floor_state.count = count;
    for (int q = 0; q < n; q++) {
        floor_state.x[q] = floor_alloc((size_t)count * size);
        floor_state.n = q + 1; /* what floor_release frees */
        if (!floor_state.x[q]) return -ENOMEM;
        for (int64_t i = 0; i < count; i++) { /* small weights of either sign, as a model's */
            float v = (float)((int64_t)((i * 2654435761u + (uint64_t)q) % 2001) - 1000) * 2e-5f;
            if (dtype == RMT_F32)
                ((float *)floor_state.x[q])[i] = v;
            else
                ((uint16_t *)floor_state.x[q])[i] = float_to_bf16(v);
        }
        /* task arithmetic at the benchmark's lambda (bench_merge.SCALING = 0.3), its weights
         * rounded from double as rmtllmf.fusion.fast.kernel passes them */
        floor_state.wf[q] = (float)(q ? 0.3 : 1.0 - 0.3 * (n - 1));
    }
    floor_state.out = floor_alloc((size_t)count * size);
    return floor_state.out ? 0 : -ENOMEM;
}

static void *floor_worker(void *arg) {
    (void)arg;
    size_t size = itemsize(floor_state.dtype);
    int64_t per_job = FLOOR_JOB_BYTES / (int64_t)size;
    char *buffer = aligned_alloc(64, OUT_ELEMS * sizeof(double));
    if (!buffer) return (void *)(intptr_t)-ENOMEM;
    const void *x[RMT_MAX_INPUTS];
    for (;;) {
        int64_t first = __atomic_fetch_add(&floor_state.next, 1, __ATOMIC_RELAXED) * per_job;
        if (first >= floor_state.count) break;
        int64_t end = first + per_job < floor_state.count ? first + per_job : floor_state.count;
        for (int64_t b = first, m; b < end; b += m) {
            m = end - b < OUT_ELEMS ? end - b : OUT_ELEMS;
            for (int q = 0; q < floor_state.n; q++) x[q] = floor_state.x[q] + b * (int64_t)size;
            if (floor_state.dtype == RMT_F32)
                sum_f32(floor_state.n, (const float *const *)x, floor_state.wf, m,
                        (float *)buffer);
            else
                sum_bf16(floor_state.n, (const uint16_t *const *)x, floor_state.wf, m,
                         (uint16_t *)buffer);
            memcpy(floor_state.out + b * (int64_t)size, buffer, (size_t)m * size);
        }
    }
    free(buffer);
    return NULL;
}

int rmt_floor_run(int threads) {
    if (!floor_state.out || threads < 1 || threads > RMT_MAX_THREADS) return -EINVAL;
    floor_state.next = 0;
    pthread_t ids[RMT_MAX_THREADS];
    int started = 0;
    for (; started < threads - 1; started++)
        if (pthread_create(&ids[started], NULL, floor_worker, NULL)) break;
    intptr_t rc = (intptr_t)floor_worker(NULL);
    for (int t = 0; t < started; t++) {
        void *worker_rc;
        pthread_join(ids[t], &worker_rc);
        if (!rc) rc = (intptr_t)worker_rc;
    }
    return (int)rc;
}

const void *rmt_floor_array(int q) {
    if (q < 0 || q > floor_state.n) return NULL;
    return q == floor_state.n ? floor_state.out : floor_state.x[q];
}
