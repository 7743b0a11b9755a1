/* prime_harmonic65k: 65,536 values dense near zero and along the harmonic and prime-reciprocal
 * series.  SPEC.md, "Grids".  No keys.
 *
 * In float64: {0, ±1} ∪ {±1/p^1.05 : p prime ≤ 60000} ∪ {±1/(1.2·i) : 2 ≤ i ≤ 9999}
 * ∪ {±i/8192 : 1 ≤ i ≤ 8191}, exact duplicates merged (48,495 values).  Then, until there are
 * 65,536, insert the midpoint of the largest gap between neighbours, the leftmost among equal
 * gaps; finally round to float32.  The prototype rescanned all gaps for every insertion (O(n²));
 * here a max-heap of gaps keyed by (gap, then smaller left value) gives the same sequence of
 * insertions in O(n log n).  SPEC.md gives the SHA-256 of the result; tests/grids_test.c checks
 * it. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <primal/plugin.h>

#define TARGET 65536
#define PRIME_MAX 60000

typedef struct gap {
    double len, left, right;
} gap;

/* a comes before b in the heap: larger gap first, then the leftmost */
static int before(const gap *a, const gap *b)
{
    if (a->len != b->len)
        return a->len > b->len;
    return a->left < b->left;
}

static void heap_push(gap *h, size_t *n, gap g)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!before(&g, &h[parent]))
            break;
        h[i] = h[parent];
        i = parent;
    }
    h[i] = g;
}

static gap heap_pop(gap *h, size_t *n)
{
    gap top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, best = i;
        const gap *bv = &last;
        if (l < *n && before(&h[l], bv)) {
            best = l;
            bv = &h[l];
        }
        if (r < *n && before(&h[r], bv))
            best = r;
        if (best == i)
            break;
        h[i] = h[best];
        i = best;
    }
    if (*n > 0)
        h[i] = last;
    return top;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int harmonic_generate(const primal_config *cfg, float *values, size_t *n, primal_err *err)
{
    (void)cfg;
    double *v = malloc(TARGET * sizeof *v);
    gap *heap = malloc(TARGET * sizeof *heap);
    unsigned char *composite = calloc(PRIME_MAX + 1, 1);
    if (v == NULL || heap == NULL || composite == NULL) {
        free(v);
        free(heap);
        free(composite);
        return primal_errf(err, PRIMAL_ENOMEM, "prime_harmonic65k: out of memory");
    }
    size_t k = 0;
    v[k++] = 0.0;
    v[k++] = 1.0;
    v[k++] = -1.0;
    for (int p = 2; p <= PRIME_MAX; p++) {
        if (composite[p])
            continue;
        for (long q = (long)p * p; q <= PRIME_MAX; q += p)
            composite[q] = 1;
        double x = 1.0 / pow((double)p, 1.05);
        v[k++] = x;
        v[k++] = -x;
    }
    for (int i = 2; i <= 9999; i++) {
        double x = 1.0 / (1.2 * i);
        v[k++] = x;
        v[k++] = -x;
    }
    for (int i = 1; i <= 8191; i++) {
        double x = i / 8192.0;
        v[k++] = x;
        v[k++] = -x;
    }
    qsort(v, k, sizeof *v, cmp_double);
    size_t u = 0;
    for (size_t i = 0; i < k; i++)
        if (u == 0 || v[i] != v[u - 1])
            v[u++] = v[i];

    size_t nh = 0;
    for (size_t i = 0; i + 1 < u; i++)
        heap_push(heap, &nh, (gap){v[i + 1] - v[i], v[i], v[i + 1]});
    size_t total = u;
    while (total < TARGET) {
        gap g = heap_pop(heap, &nh);
        double mid = (g.left + g.right) / 2.0;
        v[total++] = mid;
        heap_push(heap, &nh, (gap){mid - g.left, g.left, mid});
        heap_push(heap, &nh, (gap){g.right - mid, mid, g.right});
    }
    qsort(v, total, sizeof *v, cmp_double);
    for (size_t i = 0; i < total; i++)
        values[i] = (float)v[i];
    *n = total;
    free(v);
    free(heap);
    free(composite);
    return PRIMAL_OK;
}

static const primal_grid_vt harmonic_vt = {
    .size = sizeof(primal_grid_vt),
    .generate = harmonic_generate,
};

PRIMAL_EXPORT const primal_plugin *primal_plugin_descriptor(void)
{
    static const primal_plugin d = {
        .abi_version = PRIMAL_ABI_VERSION,
        .size = sizeof d,
        .kind = PRIMAL_KIND_GRID,
        .name = "prime_harmonic65k",
        .description = "65,536 values: prime-power and harmonic reciprocals, 1/8192 steps, "
                       "largest gaps bisected",
        .keys = NULL,
        .vtable = &harmonic_vt,
    };
    return &d;
}
