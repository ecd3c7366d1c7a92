/*
 * rmtllmf's compiled linear merge: theta = sum_q w_q theta_q over byte ranges of files (task
 * arithmetic, eq. 6 of the paper, is w_0 = 1 - N lambda for the base and w_q = lambda).
 *
 * One call runs a list of jobs, each `count` elements of one dtype at given byte offsets of the
 * inputs and the output (a window of one tensor, or of several tensors that lie back to back in
 * every file). Each input's range is memory-mapped (a window of the page cache, read in place: no
 * copy into a buffer) into the thread's arena of address space, where windows stay until the
 * arena is full and are then dropped together; the weighted sum is formed tile by tile in
 * registers and the result is
 * written with pwrite from a buffer that stays in cache. Python (rmtllmf.fusion.fused) loads this
 * library with ctypes, which releases the GIL for the whole call; the call starts its own
 * threads, which share the jobs through an atomic counter.
 *
 * Arithmetic, per element, in the accumulation type A (float for float32 / bfloat16 / float16,
 * double for float64): s = w_0 x_0, then s = s + w_q x_q for q = 1..n-1, every product and sum
 * rounded to A (built with -ffp-contract=off: no fused multiply-add), then s rounded to nearest
 * even in the tensor's dtype. The result is therefore the same bits on every machine, and equal
 * to numpy doing the same steps in A.
 *
 * Plain C with POSIX calls (and POSIX threads) only: no Python C API.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define RMT_MAX_INPUTS 256
#define RMT_MAX_THREADS 64
#define TILE 64               /* elements summed over all inputs at once */
#define OUT_ELEMS (1 << 16)   /* elements per pwrite, at most (blocks are aligned in the output) */

enum { RMT_F32 = 0, RMT_F64 = 1, RMT_BF16 = 2, RMT_F16 = 3 };

static int write_all(int fd, const char *buf, size_t size, int64_t offset) {
    while (size) {
        ssize_t done = pwrite(fd, buf, size, (off_t)offset);
        if (done < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        buf += done;
        size -= (size_t)done;
        offset += done;
    }
    return 0;
}

static float bits_to_float(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t float_to_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* bfloat16 is the top half of a float32. */
static float bf16_to_float(uint16_t h) { return bits_to_float((uint32_t)h << 16); }

/* Round to nearest even; NaN becomes the quiet NaN 0x7FC0 (as torch does). */
static uint16_t float_to_bf16(float f) {
    uint32_t u = float_to_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0u;
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* IEEE binary16 -> binary32, exact (subnormals, infinities and NaN payloads kept). */
static float f16_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1Fu;
    uint32_t mantissa = h & 0x3FFu;
    if (exponent == 0x1Fu) return bits_to_float(sign | 0x7F800000u | (mantissa << 13));
    if (exponent != 0) return bits_to_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
    float magnitude = (float)mantissa * 0x1p-24f; /* subnormal or zero, exact */
    return sign ? -magnitude : magnitude;
}

/* IEEE binary32 -> binary16, round to nearest even; overflow gives infinity, NaN stays NaN. */
static uint16_t float_to_f16(float f) {
    uint32_t u = float_to_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return sign | 0x7E00u; /* quiet NaN, as torch */
    if (a >= 0x477FF000u) return sign | 0x7C00u; /* |f| >= 65520 rounds to infinity */
    if (a < 0x38800000u) {                       /* below 2^-14: a multiple of 2^-24 */
        float scaled = bits_to_float(a) * 0x1p24f; /* exact: a power-of-two scaling */
        return sign | (uint16_t)nearbyintf(scaled); /* 1024 is the smallest normal, correctly */
    }
    uint32_t half = (((a >> 23) - 112u) << 10) | ((a >> 13) & 0x3FFu);
    uint32_t rest = a & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) half += 1u; /* carries into exponent */
    return sign | (uint16_t)half;
}

/* The tile: TILE sums held in VEC-byte vectors (GCC/Clang vector extensions, so the sums are
 * vectorized on every target; on x86-64 without AVX a 32-byte vector is two SSE registers). */
#define VEC 32
typedef float vfloat __attribute__((vector_size(VEC)));
typedef double vdouble __attribute__((vector_size(VEC)));

/* On x86-64 with GCC the native sums are also built for AVX2, picked at load time where the CPU
 * has it (8-20% faster sums of in-memory inputs in two comparisons here). The bits do not
 * change: AVX2 alone brings no fused multiply-add, and IEEE products and sums round the same
 * in every vector width. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

/* Each input's tile is followed by a prefetch of the cache lines PREFETCH_BYTES ahead of it:
 * the hardware's streamer stops at every 4 KiB page, software prefetches do not (9 x 343 MB
 * merged with 2 threads: 6-10% less time in the sums at 1-6 KiB ahead, the same across that
 * range). A prefetch past the end of a mapping is dropped, never a fault. */
#define PREFETCH_BYTES 2048
#define PREFETCH_TILE(p, bytes)                                                                \
    for (int l = 0; l < (int)((bytes) / 64); l++)                                              \
        __builtin_prefetch((const char *)(p) + PREFETCH_BYTES + 64 * l)

/* out[j] = sum_q w[q] x[q][j] for j < m, in the order above, for T = ACC (float32, float64). */
#define DEFINE_SUM_NATIVE(NAME, T, V)                                                          \
    CLONES static void NAME(int n, const T *const *x, const T *w, int64_t m, T *out) {         \
        enum { LANES = VEC / sizeof(T), VECS = TILE / LANES };                                 \
        int64_t j = 0;                                                                         \
        for (; j + TILE <= m; j += TILE) {                                                     \
            V t[VECS], v;                                                                      \
            for (int u = 0; u < VECS; u++) {                                                   \
                memcpy(&v, x[0] + j + u * LANES, VEC);                                         \
                t[u] = v * w[0];                                                               \
            }                                                                                  \
            PREFETCH_TILE(x[0] + j, sizeof t);                                                 \
            for (int q = 1; q < n; q++) {                                                      \
                const T *xq = x[q] + j;                                                        \
                T wq = w[q];                                                                   \
                for (int u = 0; u < VECS; u++) {                                               \
                    memcpy(&v, xq + u * LANES, VEC);                                           \
                    t[u] = t[u] + v * wq;                                                      \
                }                                                                              \
                PREFETCH_TILE(xq, sizeof t);                                                   \
            }                                                                                  \
            memcpy(out + j, t, sizeof t);                                                      \
        }                                                                                      \
        for (; j < m; j++) {                                                                   \
            T s = w[0] * x[0][j];                                                              \
            for (int q = 1; q < n; q++) s = s + w[q] * x[q][j];                                \
            out[j] = s;                                                                        \
        }                                                                                      \
    }

/* The same for 16-bit T accumulated in float: LOAD widens an element, STORE rounds back. */
#define DEFINE_SUM_HALF(NAME, LOAD, STORE)                                                     \
    static void NAME(int n, const uint16_t *const *x, const float *w, int64_t m,               \
                     uint16_t *out) {                                                          \
        int64_t j = 0;                                                                         \
        float t[TILE];                                                                         \
        for (; j < m; j += TILE) {                                                             \
            int64_t width = m - j < TILE ? m - j : TILE;                                       \
            for (int64_t k = 0; k < width; k++) t[k] = w[0] * LOAD(x[0][j + k]);               \
            for (int q = 1; q < n; q++)                                                        \
                for (int64_t k = 0; k < width; k++) t[k] = t[k] + w[q] * LOAD(x[q][j + k]);    \
            for (int64_t k = 0; k < width; k++) out[j + k] = STORE(t[k]);                      \
        }                                                                                      \
    }

DEFINE_SUM_NATIVE(sum_f32, float, vfloat)
DEFINE_SUM_NATIVE(sum_f64, double, vdouble)
DEFINE_SUM_HALF(sum_bf16_scalar, bf16_to_float, float_to_bf16)
DEFINE_SUM_HALF(sum_f16_scalar, f16_to_float, float_to_f16)

/* bfloat16 a vector at a time (large language models are stored in it): 16-bit lanes widen to
 * floats by a shift, and floats round back to nearest even, NaN made the quiet NaN, exactly as
 * bf16_to_float and float_to_bf16 do lane by lane. Element by element the sums were
 * compute-bound: a bfloat16 merge of half the bytes took 1.5-2x as long as the float32 one, and
 * a float16 merge 6-8x as long. */
typedef uint16_t vu16 __attribute__((vector_size(VEC / 2)));
typedef uint32_t vu32 __attribute__((vector_size(VEC)));

static inline void bf16_widen(const uint16_t *p, vfloat *f) {
    vu16 h;
    memcpy(&h, p, sizeof h);
    vu32 u = __builtin_convertvector(h, vu32) << 16;
    memcpy(f, &u, sizeof *f);
}

static inline void bf16_narrow(const vfloat *f, uint16_t *p) {
    vu32 u;
    memcpy(&u, f, sizeof u);
    vu32 rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    vu32 nan = (vu32)((u & 0x7FFFFFFFu) > 0x7F800000u); /* all ones in NaN lanes */
    vu16 h = __builtin_convertvector((rounded & ~nan) | (0x7FC0u & nan), vu16);
    memcpy(p, &h, sizeof h);
}

/* IEEE binary16 a vector at a time, lane for lane what f16_to_float and float_to_f16 do:
 * exponent and mantissa moved by shifts, subnormals through an exact float product, infinities
 * and NaN (made the quiet NaN, sign kept) and the rounding to nearest even chosen by masks. */
typedef int32_t vi32 __attribute__((vector_size(VEC)));

static inline void f16_widen(const uint16_t *p, vfloat *f) {
    vu16 h16;
    memcpy(&h16, p, sizeof h16);
    vu32 h = __builtin_convertvector(h16, vu32);
    vu32 sign = (h & 0x8000u) << 16, exponent = (h >> 10) & 0x1Fu, mantissa = h & 0x3FFu;
    vu32 normal = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    vu32 special = sign | 0x7F800000u | (mantissa << 13); /* infinities and NaN */
    vfloat tiny = __builtin_convertvector((vi32)mantissa, vfloat) * 0x1p-24f; /* exact */
    vu32 tiny_bits;
    memcpy(&tiny_bits, &tiny, sizeof tiny_bits);
    tiny_bits |= sign;
    vu32 is_special = (vu32)(exponent == 0x1Fu), is_tiny = (vu32)(exponent == 0u);
    vu32 u = (normal & ~(is_special | is_tiny)) | (special & is_special) | (tiny_bits & is_tiny);
    memcpy(f, &u, sizeof *f);
}

static inline void f16_narrow(const vfloat *f, uint16_t *p) {
    vu32 u;
    memcpy(&u, f, sizeof u);
    vu32 sign = (u >> 16) & 0x8000u, a = u & 0x7FFFFFFFu;
    /* below 2^-14: a multiple of 2^-24, rounded to an integer by adding and taking away 1.5 *
     * 2^23 (round to nearest even, exact below 2^22; a is masked to it, so no lane overflows) */
    vfloat scaled;
    vu32 small = a & 0x3FFFFFFFu;
    memcpy(&scaled, &small, sizeof scaled);
    scaled = scaled * 0x1p24f;
    scaled = (scaled + 0x1.8p23f) - 0x1.8p23f;
    vu32 tiny = (vu32)__builtin_convertvector(scaled, vi32);
    vu32 half = (((a >> 23) - 112u) << 10) | ((a >> 13) & 0x3FFu);
    vu32 rest = a & 0x1FFFu;
    half += (vu32)((rest > 0x1000u) | ((rest == 0x1000u) & ((half & 1u) == 1u))) & 1u;
    vu32 is_nan = (vu32)(a > 0x7F800000u), is_big = (vu32)(a >= 0x477FF000u) & ~is_nan;
    vu32 is_tiny = (vu32)(a < 0x38800000u);
    vu32 r = (half & ~(is_nan | is_big | is_tiny)) | (0x7E00u & is_nan) | (0x7C00u & is_big) |
             (tiny & is_tiny);
    vu16 h = __builtin_convertvector(sign | r, vu16);
    memcpy(p, &h, sizeof h);
}

/* out = sum_q w[q] x[q] for 16-bit x, in float vectors: WIDEN and NARROW convert a vector of
 * lanes; the last elements, fewer than a tile, go through SCALAR. */
#define DEFINE_SUM_HALF_VECTOR(NAME, WIDEN, NARROW, SCALAR)                                    \
    CLONES static void NAME(int n, const uint16_t *const *x, const float *w, int64_t m,        \
                            uint16_t *out) {                                                   \
        enum { LANES = VEC / sizeof(float), VECS = TILE / LANES };                             \
        int64_t j = 0;                                                                         \
        for (; j + TILE <= m; j += TILE) {                                                     \
            vfloat t[VECS], v;                                                                 \
            for (int u = 0; u < VECS; u++) {                                                   \
                WIDEN(x[0] + j + u * LANES, &v);                                               \
                t[u] = v * w[0];                                                               \
            }                                                                                  \
            PREFETCH_TILE(x[0] + j, TILE * sizeof(uint16_t));                                  \
            for (int q = 1; q < n; q++) {                                                      \
                const uint16_t *xq = x[q] + j;                                                 \
                float wq = w[q];                                                               \
                for (int u = 0; u < VECS; u++) {                                               \
                    WIDEN(xq + u * LANES, &v);                                                 \
                    t[u] = t[u] + v * wq;                                                      \
                }                                                                              \
                PREFETCH_TILE(xq, TILE * sizeof(uint16_t));                                    \
            }                                                                                  \
            for (int u = 0; u < VECS; u++) NARROW(&t[u], out + j + u * LANES);                 \
        }                                                                                      \
        if (j < m) {                                                                           \
            const uint16_t *rest[RMT_MAX_INPUTS];                                              \
            for (int q = 0; q < n; q++) rest[q] = x[q] + j;                                    \
            SCALAR(n, rest, w, m - j, out + j);                                                \
        }                                                                                      \
    }

DEFINE_SUM_HALF_VECTOR(sum_bf16, bf16_widen, bf16_narrow, sum_bf16_scalar)
DEFINE_SUM_HALF_VECTOR(sum_f16, f16_widen, f16_narrow, sum_f16_scalar)

static size_t itemsize(int dtype) {
    switch (dtype) {
    case RMT_F32: return 4;
    case RMT_F64: return 8;
    case RMT_BF16:
    case RMT_F16: return 2;
    default: return 0;
    }
}

#define HUGE_PAGE ((int64_t)1 << 21)

/*
 * A thread's arena: address space reserved (PROT_NONE) where its jobs' input windows are mapped
 * one after another, each at an address congruent to its file offset modulo 2 MiB (so that a
 * window over a 2 MiB folio of the page cache can be mapped by one huge-page entry). Windows are
 * not unmapped one by one: when the next job's windows do not fit, one mmap over the whole arena
 * drops them all. Every unmap of pages that a thread has read makes the kernel flush the other
 * threads' TLBs, by inter-processor interrupts, which in a virtual machine leave the guest: 9 x
 * 343 MB merged with 2 threads took ~1,440 TLB-shootdown interrupts unmapping each window after
 * its job, and ~55 with 64 MiB arenas (rmtllmf.fusion.kernel.MAP_BYTES says more).
 */
struct arena {
    char *reserved; /* the reservation, HUGE_PAGE longer than size for the alignment */
    char *base;     /* its first 2 MiB-aligned address */
    size_t size;    /* bytes usable from base */
    size_t used;    /* bytes taken by the windows mapped since the last drop */
};

/* Bytes of arena a window of `length` bytes at page-aligned file offset `aligned` takes: from the
 * 2 MiB boundary below its address to the one at or above its end. */
static size_t window_span(size_t length, int64_t aligned) {
    size_t end = (size_t)(aligned % HUGE_PAGE) + length;
    return (end + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
}

/* The arena bytes one job's windows take (each input's from the page boundary at or below its
 * start to its last element), with their page-aligned offsets and lengths where asked. */
static size_t job_span(int n, const int64_t *starts, int64_t count, size_t size,
                       int64_t *aligned, size_t *lengths) {
    int64_t page = (int64_t)sysconf(_SC_PAGESIZE);
    size_t need = 0;
    for (int q = 0; q < n; q++) {
        int64_t at = starts[q] - starts[q] % page;
        size_t length = (size_t)(starts[q] - at) + (size_t)count * size;
        if (aligned) aligned[q] = at;
        if (lengths) lengths[q] = length;
        need += window_span(length, at);
    }
    return need;
}

static int arena_open(struct arena *a, size_t size) {
    a->size = (size + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
    a->used = 0;
    a->reserved = mmap(NULL, a->size + HUGE_PAGE, PROT_NONE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (a->reserved == MAP_FAILED) return -errno;
    a->base = (char *)(((uintptr_t)a->reserved + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE);
    return 0;
}

/* Drop every window: the range becomes reserved address space again, in one call. */
static int arena_drop(struct arena *a) {
    if (mmap(a->base, a->size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE,
             -1, 0) == MAP_FAILED)
        return -errno;
    a->used = 0;
    return 0;
}

static void arena_close(struct arena *a) { munmap(a->reserved, a->size + HUGE_PAGE); }

/*
 * Merge `count` elements of dtype `dtype`: input q's elements start at byte starts[q] of file
 * fds[q]; the result goes to byte out_start of out_fd, through `buffer` (OUT_ELEMS elements of
 * the widest dtype), with the windows mapped in `arena`, which must be able to hold them all.
 * Returns 0, or -errno (-EINVAL for a bad argument).
 */
static int merge_range(int n, const int *fds, const int64_t *starts, int out_fd,
                       int64_t out_start, int64_t count, const double *weights, const float *wf,
                       int dtype, char *buffer, struct arena *arena) {
    size_t size = itemsize(dtype);
    if (count < 0 || size == 0) return -EINVAL;
    if (count == 0) return 0;
    for (int q = 0; q < n; q++)
        if (starts[q] < 0) return -EINVAL;
    int64_t aligned[RMT_MAX_INPUTS];
    size_t lengths[RMT_MAX_INPUTS];
    size_t need = job_span(n, starts, count, size, aligned, lengths);
    if (need > arena->size) return -EINVAL;
    int rc = arena->used + need > arena->size ? arena_drop(arena) : 0;
    const char *first[RMT_MAX_INPUTS];
    for (int q = 0; !rc && q < n; q++) {
        char *at = arena->base + arena->used + aligned[q] % HUGE_PAGE;
        void *map = mmap(at, lengths[q], PROT_READ, MAP_SHARED | MAP_FIXED, fds[q],
                         (off_t)aligned[q]);
        if (map == MAP_FAILED) {
            rc = -errno;
            break;
        }
        arena->used += window_span(lengths[q], aligned[q]);
        madvise(map, lengths[q], MADV_SEQUENTIAL);
#ifdef MADV_HUGEPAGE
        /* Where the page cache holds the file in 2 MiB folios (and the window covers one, at a
         * 2 MiB-aligned address) a window is mapped by one huge-page entry: one fault instead of
         * one per 64 KiB. Pages not in the cache are read in 2 MiB folios, so that later merges
         * find them so; without it, pages read through a mapping come back as 4 KiB folios (9
         * x 343 MB read cold: 47k faults and 0.47 s per merge after, against 1.9k and 0.29 s).
         * Where transparent huge pages are off this is refused, and nothing changes. */
        madvise(map, lengths[q], MADV_HUGEPAGE);
#endif
        first[q] = (const char *)map + (starts[q] - aligned[q]);
    }
    int64_t block = OUT_ELEMS * (int64_t)size;
    for (int64_t b = 0, m; !rc && b < count; b += m) {
        /* A block ends where the output offset crosses a multiple of the block's bytes: the
         * writes then fill aligned ranges, which the page cache holds in larger folios (9 x 343
         * MB merged with 2 threads: 55 ms of writes per thread against 67 ms unaligned). */
        m = (block - (out_start + b * (int64_t)size) % block) / (int64_t)size;
        if (m == 0) m = OUT_ELEMS; /* elements not aligned to their size: no aligned block */
        if (m > count - b) m = count - b;
        const void *x[RMT_MAX_INPUTS];
        for (int q = 0; q < n; q++) x[q] = first[q] + b * (int64_t)size;
        switch (dtype) {
        case RMT_F32: sum_f32(n, (const float *const *)x, wf, m, (float *)buffer); break;
        case RMT_F64: sum_f64(n, (const double *const *)x, weights, m, (double *)buffer); break;
        case RMT_BF16: sum_bf16(n, (const uint16_t *const *)x, wf, m, (uint16_t *)buffer); break;
        default: sum_f16(n, (const uint16_t *const *)x, wf, m, (uint16_t *)buffer); break;
        }
        rc = write_all(out_fd, buffer, (size_t)m * size, out_start + b * (int64_t)size);
    }
    return rc;
}

/* The arguments of one call, shared by its threads. */
struct job_list {
    int n;
    const int *fds;
    int64_t jobs;
    const int64_t *starts, *out_starts, *counts;
    const int32_t *dtypes;
    const double *weights;
    int out_fd;
    size_t arena_bytes; /* each thread's arena: the budget asked for, or one job's windows */
    int64_t *next;
};

/* Run jobs until none is left, taking each from the shared counter *next (atomically). Returns
 * 0, or the first failure's -errno after setting *next to the job count (the others stop). */
static int run_jobs(const struct job_list *a) {
    float wf[RMT_MAX_INPUTS];
    for (int q = 0; q < a->n; q++) wf[q] = (float)a->weights[q];
    char *buffer = aligned_alloc(64, OUT_ELEMS * sizeof(double));
    if (!buffer) return -ENOMEM;
    struct arena arena = {0};
    int rc = arena_open(&arena, a->arena_bytes);
    if (rc) {
        free(buffer);
        return rc;
    }
    for (;;) {
        int64_t j = __atomic_fetch_add(a->next, 1, __ATOMIC_RELAXED);
        if (j >= a->jobs) break;
        rc = merge_range(a->n, a->fds, a->starts + j * a->n, a->out_fd, a->out_starts[j],
                         a->counts[j], a->weights, wf, a->dtypes[j], buffer, &arena);
        if (rc) {
            __atomic_store_n(a->next, a->jobs, __ATOMIC_RELAXED);
            break;
        }
    }
    arena_close(&arena);
    free(buffer);
    return rc;
}

struct worker {
    pthread_t id;
    const struct job_list *jobs;
    int rc;
};

static void *run_worker(void *arg) {
    struct worker *w = arg;
    w->rc = run_jobs(w->jobs);
    return NULL;
}

/*
 * Run `jobs` jobs on `threads` threads (the caller's and threads - 1 started here; fewer where
 * the system refuses one): job j merges counts[j] elements of dtypes[j], input q's starting at
 * byte starts[j * n + q] of fds[q], into byte out_starts[j] of out_fd. Jobs are taken in turn
 * from the counter *next, which starts at 0; setting it to `jobs` from anywhere stops the call
 * after the jobs under way (Python's Ctrl-C does that). Each thread keeps up to `map_bytes` of
 * input windows mapped (at least one job's) before it drops them together. Returns 0 or the
 * first failure's -errno.
 */
int rmt_linear_merge_jobs(int n, const int *fds, int64_t jobs, const int64_t *starts,
                          const int64_t *out_starts, const int64_t *counts, const int32_t *dtypes,
                          const double *weights, int out_fd, int threads, int64_t map_bytes,
                          int64_t *next) {
    if (n < 1 || n > RMT_MAX_INPUTS || jobs < 0 || threads < 1 || map_bytes < 0) return -EINVAL;
    if (threads > RMT_MAX_THREADS) threads = RMT_MAX_THREADS;
    size_t arena_bytes = (size_t)map_bytes;
    for (int64_t j = 0; j < jobs; j++) {
        size_t size = itemsize(dtypes[j]);
        int negative = 0;
        for (int q = 0; q < n; q++) negative |= starts[j * n + q] < 0;
        /* nothing mapped, or refused with -EINVAL when run */
        if (counts[j] <= 0 || size == 0 || negative) continue;
        size_t need = job_span(n, starts + j * n, counts[j], size, NULL, NULL);
        if (need > arena_bytes) arena_bytes = need;
    }
    struct job_list list = {.n = n, .fds = fds, .jobs = jobs, .starts = starts,
                            .out_starts = out_starts, .counts = counts, .dtypes = dtypes,
                            .weights = weights, .out_fd = out_fd, .arena_bytes = arena_bytes,
                            .next = next};
    struct worker workers[RMT_MAX_THREADS];
    int started = 0;
    for (; started < threads - 1; started++) {
        workers[started].jobs = &list;
        workers[started].rc = 0;
        if (pthread_create(&workers[started].id, NULL, run_worker, &workers[started])) break;
    }
    int rc = run_jobs(&list);
    for (int t = 0; t < started; t++) {
        pthread_join(workers[t].id, NULL);
        if (!rc) rc = workers[t].rc;
    }
    return rc;
}
