/* hfimport.h (private to libprimal): a Hugging Face model into a PRIMAL model or checkpoint
 * (SPEC.md, "Models" and "Snapping a float matrix onto a grid").
 *
 * Reads config.json and the (possibly sharded) F32/F16/BF16 weights one tensor at a time through
 * the file mapping: each tensor is converted into one reused float buffer, snapped onto its grid
 * (or copied, dense) and dropped, so the float copy never exceeds the largest tensor. */
#ifndef PRIMAL_HFIMPORT_H
#define PRIMAL_HFIMPORT_H

#include <primal/error.h>

#include "model.h"

/* Create *out from hf_dir: the model that config.json describes, every matrix over
 * grid_for(user, name) (NULL: dense), filled from the weights.  Hugging Face names map 1:1 to
 * parameter names; a tied model needs no lm_head.weight (one present is ignored), rotary
 * inv_freq buffers are ignored, and any other tensor the model lacks is refused
 * (PRIMAL_ECONFIG), since it means an architecture feature the engine would silently drop. */
int primal_hf_load_model(const char *hf_dir, primal_grid_for grid_for, void *user,
                         primal_model **out, primal_err *err);

/* primal_hf_load_model with every matrix over grid (NULL: dense), saved as a checkpoint at
 * out_path with config_ini (may be NULL) as its primal.config. */
int primal_hf_import(const char *hf_dir, const primal_grid_ref *grid, const char *out_path,
                     const char *config_ini, primal_err *err);

#endif
