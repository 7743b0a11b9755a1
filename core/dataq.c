/* dataq.c: the prefetch queue (dataq.h).  One producer thread, one consumer, a ring of slots
 * under one mutex: batches are large and few, so contention does not matter. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "dataq.h"

typedef struct slot {
    primal_batch b;
    unsigned char state[PRIMAL_LOADER_STATE_MAX]; /* loader position after this batch */
    size_t state_n;
    int rc;
    primal_err err;
} slot;

struct primal_dataq {
    const primal_loader_vt *vt;
    void *ctx;
    int rows, seq_len, depth;
    slot *slots;
    int head, count; /* ring: the consumer takes slots[head]; count are ready */
    int held;        /* the slot handed to the consumer, released at the next call */
    int running, stop;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned char pos[PRIMAL_LOADER_STATE_MAX];
    size_t pos_n;
};

static void *producer(void *arg)
{
    primal_dataq *q = arg;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        /* the held slot is not reused until the consumer comes back */
        while (!q->stop && q->count + (q->held >= 0) >= q->depth)
            pthread_cond_wait(&q->cv, &q->mu);
        if (q->stop)
            break;
        int idx = (q->head + q->count + (q->held >= 0)) % q->depth;
        slot *s = &q->slots[idx];
        pthread_mutex_unlock(&q->mu);

        s->b.rows = q->rows;
        s->b.seq_len = q->seq_len;
        primal_err_clear(&s->err);
        s->rc = q->vt->next(q->ctx, &s->b, &s->err);
        if (s->rc == PRIMAL_OK)
            s->rc = q->vt->save(q->ctx, s->state, sizeof s->state, &s->state_n, &s->err);

        pthread_mutex_lock(&q->mu);
        q->count++;
        pthread_cond_broadcast(&q->cv);
        if (s->rc != PRIMAL_OK) {
            /* the consumer sees the error in order; nothing after it is produced */
            while (!q->stop)
                pthread_cond_wait(&q->cv, &q->mu);
            break;
        }
    }
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

static int alloc_slots(primal_dataq *q, primal_err *err)
{
    for (int i = 0; i < q->depth; i++) {
        slot *s = &q->slots[i];
        free(s->b.tokens);
        free(s->b.mask);
        s->b.tokens = malloc((size_t)q->rows * (size_t)(q->seq_len + 1) * sizeof(int32_t));
        s->b.mask = malloc((size_t)q->rows * (size_t)q->seq_len);
        if (s->b.tokens == NULL || s->b.mask == NULL)
            return primal_errf(err, PRIMAL_ENOMEM, "data queue: out of memory for %d x %d",
                               q->rows, q->seq_len);
    }
    return PRIMAL_OK;
}

static int start(primal_dataq *q, primal_err *err)
{
    q->head = 0;
    q->count = 0;
    q->held = -1;
    q->stop = 0;
    if (pthread_create(&q->thread, NULL, producer, q) != 0)
        return primal_errf(err, PRIMAL_ERROR, "data queue: cannot start the loader thread");
    q->running = 1;
    return PRIMAL_OK;
}

static void halt(primal_dataq *q)
{
    if (!q->running)
        return;
    pthread_mutex_lock(&q->mu);
    q->stop = 1;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
    pthread_join(q->thread, NULL);
    q->running = 0;
}

int primal_dataq_open(const primal_loaded *loader, const primal_config *cfg,
                      const primal_loader_info *info, int rows, int seq_len, int depth,
                      primal_dataq **out, primal_err *err)
{
    *out = NULL;
    primal_dataq *q = calloc(1, sizeof *q);
    if (q == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "data queue: out of memory");
    q->vt = loader->desc->vtable;
    q->rows = rows;
    q->seq_len = seq_len;
    q->depth = depth < 2 ? 2 : depth;
    q->held = -1;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
    q->slots = calloc((size_t)q->depth, sizeof *q->slots);
    int rc = q->slots ? PRIMAL_OK : primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    if (rc == PRIMAL_OK)
        rc = q->vt->open(cfg, info, &q->ctx, err);
    if (rc == PRIMAL_OK)
        rc = q->vt->save(q->ctx, q->pos, sizeof q->pos, &q->pos_n, err);
    if (rc == PRIMAL_OK)
        rc = alloc_slots(q, err);
    if (rc == PRIMAL_OK)
        rc = start(q, err);
    if (rc != PRIMAL_OK) {
        primal_dataq_close(q);
        return rc;
    }
    *out = q;
    return PRIMAL_OK;
}

static int restart(primal_dataq *q, int seq_len, primal_err *err)
{
    halt(q);
    int rc = q->vt->restore(q->ctx, q->pos, q->pos_n, err);
    if (rc != PRIMAL_OK)
        return rc;
    if (seq_len != q->seq_len) {
        q->seq_len = seq_len;
        rc = alloc_slots(q, err);
        if (rc != PRIMAL_OK)
            return rc;
    }
    return start(q, err);
}

int primal_dataq_next(primal_dataq *q, int seq_len, const primal_batch **b, primal_err *err)
{
    if (seq_len != q->seq_len || !q->running) {
        int rc = restart(q, seq_len, err);
        if (rc != PRIMAL_OK)
            return rc;
    }
    pthread_mutex_lock(&q->mu);
    if (q->held >= 0) {
        q->head = (q->head + 1) % q->depth;
        q->held = -1;
        pthread_cond_broadcast(&q->cv);
    }
    while (q->count == 0)
        pthread_cond_wait(&q->cv, &q->mu);
    slot *s = &q->slots[q->head];
    q->count--;
    q->held = q->head;
    pthread_mutex_unlock(&q->mu);
    if (s->rc != PRIMAL_OK) {
        if (err != NULL)
            *err = s->err;
        int rc = s->rc;
        halt(q); /* a later call restarts from the last good position */
        return rc;
    }
    memcpy(q->pos, s->state, s->state_n);
    q->pos_n = s->state_n;
    *b = &s->b;
    return PRIMAL_OK;
}

void primal_dataq_position(const primal_dataq *q, const void **state, size_t *n)
{
    *state = q->pos;
    *n = q->pos_n;
}

int primal_dataq_restore(primal_dataq *q, const void *state, size_t n, primal_err *err)
{
    if (n > sizeof q->pos)
        return primal_errf(err, PRIMAL_EIO, "loader position of %zu bytes is too large", n);
    halt(q);
    memcpy(q->pos, state, n);
    q->pos_n = n;
    return restart(q, q->seq_len, err);
}

void primal_dataq_close(primal_dataq *q)
{
    if (q == NULL)
        return;
    halt(q);
    if (q->ctx != NULL)
        q->vt->close(q->ctx);
    for (int i = 0; q->slots && i < q->depth; i++) {
        free(q->slots[i].b.tokens);
        free(q->slots[i].b.mask);
    }
    free(q->slots);
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cv);
    free(q);
}
