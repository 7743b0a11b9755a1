/* datafiles.c: a loader's file set and its train/val cut (primal/datafiles.h); SPEC.md "Data
 * loaders".
 *
 * Keys, read from the loader's [data] section: path (required), val_fraction, val_path (""), as
 * the header describes.  The paths are expanded and stat'ed once, at open; the files are read
 * only where a line start must be found.  The loaders text, sft_jsonl and tokens use it. */
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <primal/datafiles.h>

void primal_data_split_free(primal_data_split *s)
{
    if (s == NULL)
        return;
    for (int i = 0; i < s->nfiles; i++)
        free(s->files[i].path);
    free(s->files);
    free(s->segs);
    free(s);
}

/* Appends path (taking it, freed on failure too) with its size. */
static int add_file(primal_data_split *s, int *cap, char *path, primal_err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        int rc = primal_errf(err, PRIMAL_EIO, "%s: cannot open: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        free(path);
        return rc;
    }
    close(fd);
    if (!S_ISREG(st.st_mode)) {
        int rc = primal_errf(err, PRIMAL_EIO, "%s: not a regular file", path);
        free(path);
        return rc;
    }
    if (s->nfiles == *cap) {
        int nc = *cap ? 2 * *cap : 8;
        primal_data_file *g = realloc(s->files, (size_t)nc * sizeof *g);
        if (g == NULL) {
            free(path);
            return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
        }
        s->files = g;
        *cap = nc;
    }
    s->files[s->nfiles++] = (primal_data_file){path, (int64_t)st.st_size};
    return PRIMAL_OK;
}

/* Comma-separated paths or globs from key into s->files; a glob's matches come sorted, as
 * glob(3) gives. */
static int expand_paths(const primal_config *cfg, const char *key, primal_data_split *s,
                        primal_err *err)
{
    const char *dir = primal_cfg_dir(cfg);
    const char *value = primal_cfg_str(cfg, key);
    if (value == NULL) /* the loader did not declare the key as a STRING */
        return primal_cfg_errf(cfg, key, err, PRIMAL_ECONFIG, "not a string key of this loader");
    char *list = strdup(value);
    if (list == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    int cap = 0, rc = PRIMAL_OK;
    char *save = NULL;
    for (char *item = strtok_r(list, ",", &save); item && rc == PRIMAL_OK;
         item = strtok_r(NULL, ",", &save)) {
        while (*item == ' ' || *item == '\t')
            item++;
        size_t len = strlen(item);
        while (len > 0 && (item[len - 1] == ' ' || item[len - 1] == '\t'))
            item[--len] = '\0';
        if (len == 0)
            continue;
        char *full;
        if (item[0] == '/' || dir == NULL || dir[0] == '\0')
            full = strdup(item);
        else if (asprintf(&full, "%s/%s", dir, item) < 0)
            full = NULL;
        if (full == NULL) {
            rc = primal_errf(err, PRIMAL_ENOMEM, "out of memory");
            break;
        }
        if (strpbrk(full, "*?[") == NULL) {
            rc = add_file(s, &cap, full, err);
            continue;
        }
        glob_t g;
        int gr = glob(full, 0, NULL, &g);
        if (gr == GLOB_NOMATCH)
            rc = primal_errf(err, PRIMAL_EIO, "%s: no file matches", full);
        else if (gr != 0)
            rc = primal_errf(err, PRIMAL_EIO, "%s: cannot expand the pattern", full);
        for (size_t i = 0; gr == 0 && i < g.gl_pathc && rc == PRIMAL_OK; i++) {
            char *p = strdup(g.gl_pathv[i]);
            rc = p ? add_file(s, &cap, p, err)
                   : primal_errf(err, PRIMAL_ENOMEM, "out of memory");
        }
        if (gr == 0)
            globfree(&g);
        free(full);
    }
    free(list);
    if (rc == PRIMAL_OK && s->nfiles == 0)
        rc = primal_cfg_errf(cfg, key, err, PRIMAL_ECONFIG, "no file given");
    return rc;
}

/* The first line start at or after off in file f (its end if no newline follows). */
static int line_start_from(const primal_data_file *f, int64_t off, int64_t *cut,
                           primal_err *err)
{
    if (off <= 0 || off >= f->size) {
        *cut = off <= 0 ? 0 : f->size;
        return PRIMAL_OK;
    }
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return primal_errf(err, PRIMAL_EIO, "%s: cannot open: %s", f->path, strerror(errno));
    char buf[65536];
    int64_t pos = off - 1; /* a newline just before off makes off a line start */
    *cut = f->size;
    for (;;) {
        ssize_t r = pread(fd, buf, sizeof buf, (off_t)pos);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int rc = primal_errf(err, PRIMAL_EIO, "%s: read at byte %lld: %s", f->path,
                                 (long long)pos, strerror(errno));
            close(fd);
            return rc;
        }
        if (r == 0)
            break;
        char *nl = memchr(buf, '\n', (size_t)r);
        if (nl != NULL) {
            *cut = pos + (nl - buf) + 1;
            break;
        }
        pos += r;
    }
    close(fd);
    return PRIMAL_OK;
}

/* Cut s->files into s->segs.  The cut is found in records and only then turned into a byte
 * offset, so that it lands where it would in a loader that counts records (the tokens loader's
 * ids) rather than bytes. */
static int cut_segments(primal_data_split *s, int split, int separate, double vf, int record,
                        primal_err *err)
{
    int unit = record == PRIMAL_DATA_LINES ? 1 : record;
    int n = s->nfiles;
    int64_t total = 0, bytes = 0;
    for (int i = 0; i < n; i++) {
        const primal_data_file *f = &s->files[i];
        if (f->size % unit != 0)
            return primal_errf(err, PRIMAL_EIO, "%s: %lld bytes is not a whole number of "
                               "%d-byte records", f->path, (long long)f->size, unit);
        total += f->size / unit;
        bytes += f->size;
    }
    s->segs = calloc((size_t)n, sizeof *s->segs);
    if (s->segs == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    /* the cut, as (file, byte offset) in the concatenation: none on a separate val_path */
    int cut_file = n, rc = PRIMAL_OK;
    int64_t cut_off = 0;
    if (!separate) {
        int64_t c0 = total - (int64_t)(vf * (double)total), base = 0;
        for (int i = 0; i < n; i++) {
            int64_t ni = s->files[i].size / unit;
            if (c0 < base + ni) {
                cut_file = i;
                cut_off = (c0 - base) * unit;
                if (record == PRIMAL_DATA_LINES)
                    rc = line_start_from(&s->files[i], cut_off, &cut_off, err);
                break;
            }
            base += ni;
        }
    }
    for (int i = 0; i < n && rc == PRIMAL_OK; i++) {
        int64_t a = 0, b = s->files[i].size;
        if (!separate && split == PRIMAL_SPLIT_TRAIN) {
            if (i > cut_file)
                continue;
            if (i == cut_file)
                b = cut_off;
        } else if (!separate) {
            if (i < cut_file)
                continue;
            if (i == cut_file)
                a = cut_off;
        }
        if (b > a) {
            s->segs[s->nsegs++] = (primal_data_seg){i, a, b};
            s->bytes += b - a;
        }
    }
    if (rc != PRIMAL_OK || s->nsegs > 0)
        return rc;
    if (split == PRIMAL_SPLIT_VAL)
        return primal_errf(err, PRIMAL_EOF, "%s: the validation split is empty",
                           s->files[0].path);
    return primal_errf(err, PRIMAL_ECONFIG, "%s: the train split is empty (%lld bytes in %d "
                       "file(s))", s->files[0].path, (long long)bytes, n);
}

int primal_data_split_new(const primal_config *cfg, int split, int record,
                          primal_data_split **out, primal_err *err)
{
    *out = NULL;
    if (split != PRIMAL_SPLIT_TRAIN && split != PRIMAL_SPLIT_VAL)
        return primal_errf(err, PRIMAL_ERROR, "[%s] split %d: expected train (%d) or val (%d)",
                           primal_cfg_section(cfg), split, PRIMAL_SPLIT_TRAIN,
                           PRIMAL_SPLIT_VAL);
    if (record < 0)
        return primal_errf(err, PRIMAL_ERROR, "[%s] record size %d: expected > 0 or "
                           "PRIMAL_DATA_LINES", primal_cfg_section(cfg), record);
    const char *val_path = primal_cfg_str(cfg, "val_path");
    double vf = primal_cfg_float(cfg, "val_fraction");
    int separate = val_path != NULL && val_path[0] != '\0';
    if (separate && primal_cfg_is_set(cfg, "val_fraction") && vf != 0.0)
        return primal_cfg_errf(cfg, "val_fraction", err, PRIMAL_ECONFIG,
                               "must be 0 or unset when val_path is given (got %g)", vf);
    if (split == PRIMAL_SPLIT_VAL && !separate && vf == 0.0)
        return primal_errf(err, PRIMAL_EOF, "[%s] no validation split: val_fraction is 0 "
                           "and val_path is not given", primal_cfg_section(cfg));
    primal_data_split *s = calloc(1, sizeof *s);
    if (s == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    int rc = expand_paths(cfg, separate && split == PRIMAL_SPLIT_VAL ? "val_path" : "path", s,
                          err);
    if (rc == PRIMAL_OK)
        rc = cut_segments(s, split, separate, vf, record, err);
    if (rc != PRIMAL_OK) {
        primal_data_split_free(s);
        return rc;
    }
    *out = s;
    return PRIMAL_OK;
}
