/* primal/datafiles.h: the files of a data loader's split, and the byte ranges it reads of them.
 *
 * Every loader that reads corpus files takes the same three [data] keys (SPEC.md, "Data
 * loaders"), and this is their one implementation:
 *   path          STRING, required  one or more paths or globs, comma-separated (blanks around
 *                                   an item ignored); relative ones resolve against the
 *                                   experiment file's directory (primal_cfg_dir); a glob's
 *                                   matches come in glob(3)'s sorted order
 *   val_fraction  FLOAT             the last fraction of the records of the concatenated path
 *                                   files is the val split, the rest the train split; declare
 *                                   it with range "[0,0.5)" so that train is never empty
 *   val_path      STRING ""         a separate validation file set, read whole; val_fraction
 *                                   must then be 0 or unset
 * A loader declares these keys in its primal_key list (with those names and types) and calls
 * primal_data_split_new() from its open(); it then reads the files itself. */
#ifndef PRIMAL_DATAFILES_H
#define PRIMAL_DATAFILES_H

#include <stdint.h>

#include <primal/error.h>
#include <primal/plugin.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A record is a line: the cut between train and val moves forward to the next line start. */
#define PRIMAL_DATA_LINES 0

typedef struct primal_data_file {
    char *path;   /* as opened: joined onto the experiment directory, glob expanded */
    int64_t size; /* bytes, when the split was made */
} primal_data_file;

typedef struct primal_data_seg {
    int file;           /* index into primal_data_split.files */
    int64_t start, end; /* byte range [start, end) of that file in this split; never empty */
} primal_data_seg;

typedef struct primal_data_split {
    primal_data_file *files; /* (nfiles) every file of the set the split was cut from, in order,
                              * also those with no byte in this split; nfiles >= 1 */
    int nfiles;
    primal_data_seg *segs;   /* (nsegs) the split's bytes in reading order; nsegs >= 1 */
    int nsegs;
    int64_t bytes;           /* sum of end - start over segs */
} primal_data_split;

/* The files and byte ranges of one split, for a loader's open().
 *
 * split: PRIMAL_SPLIT_TRAIN or PRIMAL_SPLIT_VAL.  record: bytes per record (> 0), or
 * PRIMAL_DATA_LINES.  With record > 0 every file must hold whole records and the cut falls
 * between records: of the N records of the concatenated path files, the last
 * floor(val_fraction * N) are val.  With PRIMAL_DATA_LINES the same count is taken in bytes and
 * the cut is then moved forward to the first line start at or after it (the end of its file if
 * no newline follows), so that no line is split between train and val.
 *
 * On PRIMAL_OK *out is a new split that the caller owns and frees with primal_data_split_free().
 * Otherwise *out is NULL and err says why, naming the key or the path:
 *   PRIMAL_ECONFIG  "FILE:LINE: [data] val_fraction: must be 0 or unset when val_path is given
 *                   (got X)", "FILE:LINE: [data] path: no file given" (or val_path),
 *                   "PATH: the train split is empty (N bytes in K file(s))"
 *   PRIMAL_EOF      split is VAL and there is none: "[data] no validation split: val_fraction
 *                   is 0 and val_path is not given", or "PATH: the validation split is empty"
 *                   (the loader returns it from open(), as primal_loader_vt asks)
 *   PRIMAL_EIO      "PATH: cannot open: REASON", "PATH: not a regular file", "GLOB: no file
 *                   matches", "GLOB: cannot expand the pattern", "PATH: N bytes is not a whole
 *                   number of R-byte records", "PATH: read at byte N: REASON"
 *   PRIMAL_ENOMEM   "out of memory"
 * where PATH is the first file of the set for the empty-split messages. */
int primal_data_split_new(const primal_config *cfg, int split, int record,
                          primal_data_split **out, primal_err *err);

/* Free a split and its paths; NULL is fine. */
void primal_data_split_free(primal_data_split *s);

#ifdef __cplusplus
}
#endif
#endif
