/* checkpoint.h (private to libprimal): saving and loading a model and the run's training state
 * as one safetensors file (format: docs/FORMAT.md; SPEC.md, "The experiment file and the run
 * directory").
 *
 * A checkpoint holds the model exactly as it is in memory (indices in their packed width, scales,
 * norms, biases, dense matrices), each distinct grid once, the model config, the resolved
 * experiment INI text, and caller-named blobs of training state (policy state, AdamW moments,
 * loader position, RNG/step).  Saving is atomic (write, fsync, rename); opening verifies the
 * format version, the data and header checksums and every grid's hash, so a corrupt or
 * truncated file is refused with its path before anything is loaded, and checks the tensors
 * against the config (shapes, indices inside their grids, finite floats), so a file that was
 * tampered with and signed again cannot make a reader allocate or index out of bounds. */
#ifndef PRIMAL_CHECKPOINT_H
#define PRIMAL_CHECKPOINT_H

#include <stddef.h>

#include <primal/error.h>

#include "model.h"

#define PRIMAL_CKPT_FORMAT "1"

/* One blob of training state, stored as the U8 tensor "state.<name>". */
typedef struct primal_ckpt_blob {
    const char *name; /* non-empty, unique within one save */
    const void *data; /* n bytes; may be NULL when n is 0 */
    size_t n;
} primal_ckpt_blob;

typedef struct primal_ckpt primal_ckpt;

/* Write m, config_ini (the resolved experiment file; NULL or "" for none) and the blobs to path,
 * atomically.  On error path is untouched and no temporary file remains. */
int primal_ckpt_save(const char *path, primal_model *m, const char *config_ini,
                     const primal_ckpt_blob *blobs, int nblobs, primal_err *err);

/* Open and verify: format version, data and header checksums, grid hashes, model config, and
 * that every state.* tensor is a U8 list.  The checksums have no key, so a file edited and
 * signed again passes them: the tensors themselves are then checked against the config before
 * anyone allocates a model of it, namely the config's sizes within primal_model_check_config's
 * limits, every parameter present with the dtype and shape that the config and its grid give,
 * every index below its grid's size, every float parameter and grid value finite (grid values
 * ascending too).  PRIMAL_EIO with the path (and the tensor and place, where one is at fault)
 * for anything wrong.  Every way of loading a checkpoint goes through here. */
int primal_ckpt_open(const char *path, primal_ckpt **out, primal_err *err);
void primal_ckpt_close(primal_ckpt *c);
const char *primal_ckpt_path(const primal_ckpt *c);

/* The model config the checkpoint was saved with (never fails once open succeeded). */
int primal_ckpt_model_config(const primal_ckpt *c, primal_model_config *out, primal_err *err);

/* The grid a matrix was stored over, or NULL for a dense matrix (or an unknown name). */
const char *primal_ckpt_grid_name(const primal_ckpt *c, const char *tensor);

/* A grid's values (ascending, *n of them), owned by c and valid until primal_ckpt_close. */
int primal_ckpt_grid(const primal_ckpt *c, const char *grid_name, const float **values, int *n,
                     primal_err *err);

/* A primal_grid_for for primal_model_create: the grid each matrix had when saved (user is the
 * primal_ckpt).  The grid_refs are owned by the checkpoint, so keep it open while the model
 * lives. */
const primal_grid_ref *primal_ckpt_grid_for(void *ckpt, const char *tensor_name);

/* Copy every parameter into m.  m must have been created with the same config and, matrix by
 * matrix, the same grid (name and values) or dense storage.  Every parameter must be present with
 * its shape and dtype; a tensor that is neither a parameter, a grid nor state.* is an error.
 * Everything is checked before anything is copied, so on error m is unchanged.  PRIMAL_ECONFIG
 * when m differs from the checkpoint (config, grid), PRIMAL_EIO when the file lacks something. */
int primal_ckpt_load_model(const primal_ckpt *c, primal_model *m, primal_err *err);

/* A blob saved under name: PRIMAL_OK and (data, n) pointing into the file's mapping (valid until
 * close; not aligned: memcpy it out), or PRIMAL_ERROR when there is no such blob. */
int primal_ckpt_get_blob(const primal_ckpt *c, const char *name, const void **data,
                         size_t *n);

/* The experiment INI text saved with the checkpoint ("" if none). */
const char *primal_ckpt_config_ini(const primal_ckpt *c);

#endif
