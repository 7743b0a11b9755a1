/* dataq.h (private to libprimal): the prefetch queue in front of a data loader.
 *
 * A background thread calls the loader's next() and fills a bounded ring of ready batches, so
 * the trainer never waits on I/O or tokenisation (SPEC.md, "Data loaders").  After producing each
 * batch the thread also saves the loader's position, and the queue remembers the position after
 * the last batch the trainer consumed: that is what a checkpoint stores, so a resumed run sees
 * exactly the batches an uninterrupted one would.  When the trainer asks for another seq_len the
 * queue drops what it prefetched, rewinds the loader to that position and starts again. */
#ifndef PRIMAL_DATAQ_H
#define PRIMAL_DATAQ_H

#include <stddef.h>

#include "registry.h"

typedef struct primal_dataq primal_dataq;

/* Opens the loader (kind loader, config cfg) for info's split and starts prefetching rows x
 * seq_len batches, depth at a time.  The loader's ctx is owned by the queue. */
int primal_dataq_open(const primal_loaded *loader, const primal_config *cfg,
                      const primal_loader_info *info, int rows, int seq_len, int depth,
                      primal_dataq **out, primal_err *err);
/* The next batch of seq_len (restarting the prefetch if seq_len changed).  *b is valid until
 * the next call. */
int primal_dataq_next(primal_dataq *q, int seq_len, const primal_batch **b, primal_err *err);
/* The loader position after the last consumed batch (or at open). */
void primal_dataq_position(const primal_dataq *q, const void **state, size_t *n);
/* Rewind to a saved position (resume). */
int primal_dataq_restore(primal_dataq *q, const void *state, size_t n, primal_err *err);
void primal_dataq_close(primal_dataq *q);

#endif
