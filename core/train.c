/* train.c: the training loop (train.h). */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include <primal/safetensors.h>
#include <primal/tokenizer.h>

#include "checkpoint.h"
#include "dataq.h"
#ifdef PRIMAL_HAVE_CUDA
#include <primal/policy_cuda.h>

#include "model_cuda.h"
#endif
#include "generate.h"
#include "hfimport.h"
#include "train.h"

/* What the trainer keeps per model parameter: the policy's state for a trainable matrix, and
 * AdamW moments for the parameter's float part (a matrix's scales, or a vector). */
typedef struct pstate {
    void *policy;
    int has_policy;
    float *m, *v; /* AdamW moments, (rows) for scales or (n) for vectors; NULL when frozen;
                   * device memory on a CUDA run */
    int64_t t;    /* AdamW steps taken by this parameter (it may join late) */
    int64_t n;    /* floats in m and v */
} pstate;

typedef struct trainer {
    primal_experiment *e;
    const primal_train_opts *o;
    primal_model *m;
    int np;
    pstate *ps;
    const primal_policy_vt *pvt;
    void *pctx;
    void **sctx;
    primal_tokenizer *tok_train, *tok_val, *tok_gen;
    primal_dataq *dq;
    void *val_ctx;
    const primal_loader_vt *lvt;
    int have_val;
    char dir[4096];
    char made[4096]; /* the topmost directory of dir this run created ("" if none): removed again
                      * when the run fails before its first step */
    int took_dir;    /* take_dir began: the run directory may hold this run's files */
    char log_path[4200];
    int log_fd;        /* log.jsonl, or -1 (other ranks) */
    off_t log_bytes;   /* its length up to the last whole line */
    double t_start;    /* now_s() when primal_train began */
    double time_off;   /* time_s of the last line a resumed run keeps */
    int64_t keep_ckpts; /* [run] keep_checkpoints */
    /* the schedulers' view */
    primal_sched_view view;
    const char **names;
    int *layers;
    uint8_t *trainable, *prev_trainable;
    /* per step */
    double gsq;    /* sum of squared matrix gradients this step (for clipping) */
    double gnorm;  /* the step's gradient norm before clipping (valid when !bad_step) */
    int bad_step;  /* a non-finite loss or gradient was seen this step */
    primal_accum_info ai;
    int64_t step, tokens, nan_skips;
    primal_ckpt *init_ckpt; /* kept open while the model uses its grids */
    /* data parallelism */
    primal_dist *dist;
    int rank, nranks;
    float *gbuf;   /* (largest matrix) the gradient tile being summed across ranks */
    /* [run] device = cuda: the GPU model (t->m stays its host mirror for checkpoints) */
    void *cm;
    primal_step_stats *dstats, *hstats; /* (np) the step's counts: device slots (step_async),
                                         * and their host copy */
    int gemm_logged; /* the GEMM plans' event is in the log (after the first step) */
} trainer;

#ifdef PRIMAL_HAVE_CUDA
#define CUDA_RUN(t) ((t)->cm != NULL)
#else
#define CUDA_RUN(t) 0
#endif

static void emit(trainer *t, primal_event ev)
{
    if (t->o->on_event != NULL && t->rank == 0)
        t->o->on_event(t->o->user, &ev);
}

static void warn(trainer *t, const char *msg)
{
    emit(t, (primal_event){.kind = PRIMAL_EV_WARN, .step = t->step, .message = msg});
}

static size_t peak_rss(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (size_t)ru.ru_maxrss * 1024;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void primal_run_dir(const primal_experiment *e, char *buf, size_t n)
{
    snprintf(buf, n, "%s", e->run.out); /* resolved at load (experiment.c, resolve_run) */
}

/* Create path and its missing parents; made (n bytes) gets the topmost directory created, or
 * "" when path existed. */
static int mkdir_p(const char *path, char *made, size_t n, primal_err *err)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", path);
    made[0] = '\0';
    for (char *p = tmp + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char c = *p;
        *p = '\0';
        if (mkdir(tmp, 0777) == 0) {
            if (made[0] == '\0')
                snprintf(made, n, "%s", tmp);
        } else if (errno != EEXIST) {
            return primal_errf(err, PRIMAL_EIO, "%s: cannot create: %s", tmp, strerror(errno));
        }
        *p = c;
        if (c == '\0')
            break;
    }
    return PRIMAL_OK;
}

static int write_file_atomic(const char *path, const char *text, primal_err *err)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "w");
    if (f == NULL)
        return primal_errf(err, PRIMAL_EIO, "%s: cannot write: %s", tmp, strerror(errno));
    int ok = fputs(text, f) >= 0;
    ok &= fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok &= fclose(f) == 0;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return primal_errf(err, PRIMAL_EIO, "%s: cannot write: %s", path, strerror(errno));
    }
    return PRIMAL_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* The run directory                                                                          */

static int truncate_log(const char *path, int64_t s, double *time_s, primal_err *err);

/* ckpt-NNNNNNNN.safetensors: 1, with the step in *step (may be NULL) */
static int ckpt_name(const char *name, int64_t *step)
{
    if (strncmp(name, "ckpt-", 5) != 0 || !isdigit((unsigned char)name[5]))
        return 0;
    char *end;
    long long v = strtoll(name + 5, &end, 10);
    if (strcmp(end, ".safetensors") != 0)
        return 0;
    if (step != NULL)
        *step = v;
    return 1;
}

/* The files of a run directory that a run writes, and so owns */
static int run_file(const char *name)
{
    return ckpt_name(name, NULL) || strcmp(name, "log.jsonl") == 0 ||
           strcmp(name, "config.ini") == 0 || strcmp(name, "sample.txt") == 0;
}

/* NAME.tmp.PID of a run file (what an atomic write leaves when its process dies): the PID,
 * else 0 */
static long run_tmp_pid(const char *name)
{
    const char *p = strstr(name, ".tmp.");
    char base[256];
    if (p == NULL || (size_t)(p - name) >= sizeof base || p[5] == '\0')
        return 0;
    memcpy(base, name, (size_t)(p - name));
    base[p - name] = '\0';
    for (const char *q = p + 5; *q; q++)
        if (!isdigit((unsigned char)*q))
            return 0;
    long pid = strtol(p + 5, NULL, 10);
    return run_file(base) && pid > 0 ? pid : 0;
}

typedef struct dir_scan {
    int ckpts, has_log, has_config;
} dir_scan;

/* What of a run's files the run directory holds (nothing if it does not exist). */
static int scan_dir(const char *dir, dir_scan *sc, primal_err *err)
{
    memset(sc, 0, sizeof *sc);
    DIR *d = opendir(dir);
    if (d == NULL) {
        if (errno == ENOENT)
            return PRIMAL_OK;
        return primal_errf(err, PRIMAL_EIO, "%s: cannot read the run directory: %s", dir,
                           strerror(errno));
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        sc->ckpts += ckpt_name(de->d_name, NULL);
        sc->has_log |= strcmp(de->d_name, "log.jsonl") == 0;
        sc->has_config |= strcmp(de->d_name, "config.ini") == 0;
    }
    closedir(d);
    return PRIMAL_OK;
}

/* Remove the run files of dir (all: --overwrite), or only the temporary files whose process is
 * gone; warn about each temporary file removed. */
static int remove_run_files(trainer *t, int all, primal_err *err)
{
    DIR *d = opendir(t->dir);
    if (d == NULL)
        return errno == ENOENT ? PRIMAL_OK
                               : primal_errf(err, PRIMAL_EIO, "%s: cannot read: %s", t->dir,
                                             strerror(errno));
    int rc = PRIMAL_OK;
    struct dirent *de;
    while ((de = readdir(d)) != NULL && rc == PRIMAL_OK) {
        long pid = run_tmp_pid(de->d_name);
        int stale = pid > 0 && pid != (long)getpid() && kill((pid_t)pid, 0) != 0 &&
                    errno == ESRCH;
        if (!(all && (run_file(de->d_name) || pid > 0)) && !stale)
            continue;
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", t->dir, de->d_name);
        if (unlink(path) != 0 && errno != ENOENT) {
            rc = primal_errf(err, PRIMAL_EIO, "%s: cannot remove: %s", path, strerror(errno));
        } else if (stale && !all) {
            char msg[4500];
            snprintf(msg, sizeof msg, "removed %s, left by a run (pid %ld) that was killed",
                     path, pid);
            warn(t, msg);
        }
    }
    closedir(d);
    return rc;
}

/* After a failure before the first step (at start, or in the first step: a batch the data
 * cannot give...): remove what the run created, so that it leaves no empty run directory.  A
 * fresh run (not one resumed from a checkpoint) removes the files it wrote (config.ini and
 * log.jsonl; take_dir found none of another run's there, or deleted them with --overwrite),
 * then the directories up to the topmost one it made; they stay where other files are left
 * (a sweep's primal-run.log).  Nothing is removed before take_dir (a refused directory). */
static void unmake_dir(trainer *t)
{
    if (!t->took_dir || t->rank != 0)
        return;
    static const char *const files[] = {"config.ini", "log.jsonl", "sample.txt"};
    char path[4400];
    for (size_t i = 0; i < sizeof files / sizeof files[0] && t->step == 0; i++) {
        snprintf(path, sizeof path, "%s/%s", t->dir, files[i]);
        unlink(path);
    }
    if (t->made[0] == '\0')
        return;
    snprintf(path, sizeof path, "%s", t->dir);
    for (;;) {
        size_t n = strlen(path);
        while (n > 1 && path[n - 1] == '/')
            path[--n] = '\0';
        if (rmdir(path) != 0 || strcmp(path, t->made) == 0)
            break;
        char *slash = strrchr(path, '/');
        if (slash == NULL || slash == path)
            break;
        *slash = '\0';
    }
    t->made[0] = '\0';
}

/* [run] keys that may change between the runs of one run directory: how long, how often, where
 * and how fast it trains, not what it computes from which data.  --resume compares every other
 * line of config.ini with the experiment's resolved configuration. */
static const char *const resume_free_keys[] = {
    "out", "steps", "ckpt_every", "keep_checkpoints", "eval_every", "eval_batches",
    "log_every", "device", "threads", "recompute", "recompute_blocks", "recompute_residual",
    "norm_input", "head_ahead", "logits", "gemm", "grad_stream", "sample_tokens",
    "sample_prompt", NULL};

/* The next line of a resolved configuration that --resume compares, as "[section] key = value"
 * in line; 0 at the end.  sect holds the current section between calls. */
static int next_compared(const char **p, char *sect, size_t ns, char *line, size_t nl)
{
    while (**p != '\0') {
        const char *s = *p, *e = strchr(s, '\n');
        int len = (int)(e != NULL ? e - s : (ptrdiff_t)strlen(s));
        *p = e != NULL ? e + 1 : s + len;
        while (len > 0 && (s[len - 1] == '\r' || s[len - 1] == ' '))
            len--;
        if (len == 0)
            continue;
        if (s[0] == '[') {
            snprintf(sect, ns, "%.*s", len, s);
            continue;
        }
        if (strcmp(sect, "[run]") == 0) {
            int skip = 0;
            for (int i = 0; resume_free_keys[i] != NULL && !skip; i++) {
                size_t kl = strlen(resume_free_keys[i]);
                skip = strncmp(s, resume_free_keys[i], kl) == 0 &&
                       (s[kl] == ' ' || s[kl] == '=');
            }
            if (skip)
                continue;
        }
        snprintf(line, nl, "%s %.*s", sect, len, s);
        return 1;
    }
    return 0;
}

/* --resume: the config.ini of run directory dir against the experiment's resolved
 * configuration. */
static int compare_config(const char *dir, const primal_experiment *e, primal_err *err)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/config.ini", dir);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return primal_errf(err, PRIMAL_EIO, "%s: cannot read: %s", path, strerror(errno));
    char *old = NULL;
    size_t oldn = 0;
    FILE *mem = open_memstream(&old, &oldn);
    char buf[4096];
    size_t n;
    while (mem != NULL && (n = fread(buf, 1, sizeof buf, f)) > 0)
        fwrite(buf, 1, n, mem);
    int bad = ferror(f);
    fclose(f);
    if (mem == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    fclose(mem);
    char *now = primal_experiment_resolved(e);
    int rc = PRIMAL_OK;
    if (bad)
        rc = primal_errf(err, PRIMAL_EIO, "%s: cannot read", path);
    else if (now == NULL || old == NULL)
        rc = primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    const char *po = old, *pn = now;
    char so[512] = "", sn[512] = "", lo[8192], ln[8192];
    while (rc == PRIMAL_OK) {
        int ho = next_compared(&po, so, sizeof so, lo, sizeof lo);
        int hn = next_compared(&pn, sn, sizeof sn, ln, sizeof ln);
        if (!ho && !hn)
            break;
        if (ho && hn && strcmp(lo, ln) == 0)
            continue;
        rc = primal_errf(err, PRIMAL_ECONFIG,
                         "%s: the run in this directory has %s%s%s where the experiment has "
                         "%s%s%s; resume it all the same with --resume-anyway, or start afresh "
                         "there with --overwrite",
                         path, ho ? "\"" : "", ho ? lo : "nothing", ho ? "\"" : "",
                         hn ? "\"" : "", hn ? ln : "nothing", hn ? "\"" : "");
    }
    free(old);
    free(now);
    return rc;
}

/* Before anything is read or written: may this run use its run directory?  One run owns it: a
 * new run is refused where another left checkpoints or a log (unless --overwrite), and --resume
 * where config.ini says another experiment ran (unless --resume-anyway).  It only reads. */
static int check_dir(const char *dir, const primal_experiment *e, const primal_train_opts *o,
                     primal_err *err)
{
    if (o->resume && o->overwrite)
        return primal_errf(err, PRIMAL_ECONFIG,
                           "--resume continues the run in %s, --overwrite deletes it: not both",
                           dir);
    dir_scan sc;
    int rc = scan_dir(dir, &sc, err);
    if (rc != PRIMAL_OK)
        return rc;
    if (!o->resume && !o->overwrite && (sc.ckpts > 0 || sc.has_log)) {
        char what[128];
        snprintf(what, sizeof what, "%s%s%d checkpoint%s", sc.has_log ? "log.jsonl" : "",
                 sc.has_log ? " and " : "", sc.ckpts, sc.ckpts == 1 ? "" : "s");
        if (sc.ckpts == 0) /* only the log */
            snprintf(what, sizeof what, "log.jsonl");
        return primal_errf(err, PRIMAL_ERROR,
                           "%s: holds another run (%s); continue it with --resume, replace it "
                           "with --overwrite (which deletes its checkpoints, log.jsonl, "
                           "config.ini and sample.txt), or set [run] out to another directory",
                           dir, what);
    }
    if (o->resume && !o->resume_anyway && sc.has_config)
        return compare_config(dir, e, err);
    return PRIMAL_OK;
}

int primal_train_check_dir(const primal_experiment *e, const primal_train_opts *o,
                           primal_err *err)
{
    char dir[4096];
    primal_run_dir(e, dir, sizeof dir);
    return check_dir(dir, e, o, err);
}

/* Once set-up (and --resume's restore) has succeeded: make the run directory this run's.  The
 * old run's files go (--overwrite), the directory is created, temporary files of killed runs
 * and a stale sample.txt are removed, log.jsonl is cut back to the resumed step and opened, and
 * config.ini is written. */
static int take_dir(trainer *t, primal_err *err)
{
    int rc = PRIMAL_OK;
    t->took_dir = 1;
    if (t->o->overwrite)
        rc = remove_run_files(t, 1, err);
    if (rc == PRIMAL_OK)
        rc = mkdir_p(t->dir, t->made, sizeof t->made, err);
    if (rc == PRIMAL_OK)
        rc = remove_run_files(t, 0, err);
    if (rc != PRIMAL_OK)
        return rc;
    char path[4200];
    snprintf(path, sizeof path, "%s/sample.txt", t->dir);
    if (unlink(path) != 0 && errno != ENOENT)
        return primal_errf(err, PRIMAL_EIO, "%s: cannot remove: %s", path, strerror(errno));
    snprintf(t->log_path, sizeof t->log_path, "%s/log.jsonl", t->dir);
    if (t->step > 0)
        rc = truncate_log(t->log_path, t->step, &t->time_off, err);
    if (rc != PRIMAL_OK)
        return rc;
    t->log_fd = open(t->log_path,
                     O_WRONLY | O_CREAT | O_CLOEXEC | (t->step > 0 ? O_APPEND : O_TRUNC), 0666);
    struct stat st;
    if (t->log_fd < 0 || fstat(t->log_fd, &st) != 0)
        return primal_errf(err, PRIMAL_EIO, "%s: cannot write: %s", t->log_path,
                           strerror(errno));
    t->log_bytes = S_ISREG(st.st_mode) ? st.st_size : 0;
    char *ini = primal_experiment_resolved(t->e);
    if (ini == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    snprintf(path, sizeof path, "%s/config.ini", t->dir);
    rc = write_file_atomic(path, ini, err);
    free(ini);
    return rc;
}

/* [run] keep_checkpoints = N > 0: after a checkpoint was written, delete all but the N newest
 * of those up to this step (newer ones, from a run that went on past the checkpoint a resume
 * took, are left to be overwritten). */
static int cmp_i64_desc(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x < y) - (x > y);
}

static void prune_ckpts(trainer *t)
{
    if (t->keep_ckpts <= 0 || t->rank != 0)
        return;
    DIR *d = opendir(t->dir);
    if (d == NULL)
        return;
    int64_t *steps = NULL, s;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!ckpt_name(de->d_name, &s) || s > t->step)
            continue;
        if (n == cap) {
            int64_t *ns = realloc(steps, (cap = cap ? 2 * cap : 64) * sizeof *steps);
            if (ns == NULL)
                break;
            steps = ns;
        }
        steps[n++] = s;
    }
    closedir(d);
    if (steps != NULL)
        qsort(steps, n, sizeof *steps, cmp_i64_desc);
    for (size_t i = (size_t)t->keep_ckpts; i < n; i++) {
        char path[4200];
        snprintf(path, sizeof path, "%s/ckpt-%08lld.safetensors", t->dir, (long long)steps[i]);
        if (unlink(path) != 0 && errno != ENOENT) {
            char msg[4400];
            snprintf(msg, sizeof msg, "[run] keep_checkpoints: cannot remove %s: %s", path,
                     strerror(errno));
            warn(t, msg);
        }
    }
    free(steps);
}

/* ------------------------------------------------------------------------------------------ */
/* Learning rate                                                                              */

/* The [optim] schedule's multiplier of lr at step s: linear warmup, then constant, cosine or
 * linear decay to min_lr at the last step. */
static double lr_factor(const primal_experiment *e, int64_t s)
{
    const primal_optim_cfg *o = &e->optim;
    if (o->warmup > 0 && s < o->warmup)
        return (double)(s + 1) / (double)o->warmup;
    if (o->schedule == 0 || o->lr <= 0)
        return 1.0;
    double floor = o->min_lr / o->lr;
    int64_t span = e->run.steps - o->warmup;
    double x = span > 1 ? (double)(s - o->warmup) / (double)(span - 1) : 1.0;
    if (x > 1)
        x = 1;
    double shape = o->schedule == 1 ? 0.5 * (1.0 + cos(M_PI * x)) : 1.0 - x;
    return floor + (1.0 - floor) * shape;
}

/* ------------------------------------------------------------------------------------------ */
/* Trainable set                                                                              */

static int param_index(const trainer *t, const primal_param *p)
{
    for (int i = 0; i < t->np; i++)
        if (primal_model_param(t->m, i) == p)
            return i;
    return -1;
}

static int64_t float_count(const primal_param *p)
{
    if (!p->is_matrix)
        return p->n;
    return p->q.dense != NULL ? 0 : p->q.rows; /* a dense matrix's floats belong to the policy */
}

static void free_state(trainer *t, int i)
{
    primal_param *p = primal_model_param(t->m, i);
    pstate *s = &t->ps[i];
#ifdef PRIMAL_HAVE_CUDA
    if (CUDA_RUN(t)) {
        primal_cuda_param *cp = primal_cuda_model_param(t->cm, i);
        if (s->has_policy && t->pvt->cuda->tensor_free != NULL)
            t->pvt->cuda->tensor_free(t->pctx, &cp->q, s->policy);
        if (s->m != NULL) {
            primal_cuda_free(t->cm, s->m, (size_t)s->n * sizeof(float));
            primal_cuda_free(t->cm, s->v, (size_t)s->n * sizeof(float));
        }
        s->m = s->v = NULL;
        s->policy = NULL;
        s->has_policy = 0;
        s->t = 0;
        s->n = 0;
        return;
    }
#endif
    if (s->has_policy && t->pvt->tensor_free != NULL)
        t->pvt->tensor_free(t->pctx, &p->q, s->policy);
    s->policy = NULL;
    s->has_policy = 0;
    free(s->m);
    free(s->v);
    s->m = s->v = NULL;
    s->t = 0;
    s->n = 0;
}

static int alloc_state(trainer *t, int i, primal_err *err)
{
    primal_param *p = primal_model_param(t->m, i);
    pstate *s = &t->ps[i];
#ifdef PRIMAL_HAVE_CUDA
    if (CUDA_RUN(t)) {
        primal_cuda_param *cp = primal_cuda_model_param(t->cm, i);
        if (p->is_matrix) {
            int rc = t->pvt->cuda->tensor_init(t->pctx, &cp->q, &s->policy,
                                               primal_cuda_model_stream(t->cm), err);
            if (rc != PRIMAL_OK)
                return primal_err_prefix(err, "%s: CUDA tensor_init of %s",
                                         t->e->policy->desc->name, p->name);
            s->has_policy = 1;
        }
        s->n = float_count(p);
        s->t = 0;
        if (s->n == 0)
            return PRIMAL_OK;
        int rc = primal_cuda_alloc(t->cm, (size_t)s->n * sizeof(float), (void **)&s->m, err);
        if (rc == PRIMAL_OK)
            rc = primal_cuda_alloc(t->cm, (size_t)s->n * sizeof(float), (void **)&s->v, err);
        return rc;
    }
#endif
    if (p->is_matrix) {
        int rc = t->pvt->tensor_init(t->pctx, &p->q, &s->policy, err);
        if (rc != PRIMAL_OK)
            return primal_err_prefix(err, "%s: tensor_init of %s", t->e->policy->desc->name,
                                     p->name);
        s->has_policy = 1;
    }
    s->n = float_count(p);
    if (s->n > 0) {
        s->m = calloc((size_t)s->n, sizeof *s->m);
        s->v = calloc((size_t)s->n, sizeof *s->v);
        if (s->m == NULL || s->v == NULL)
            return primal_errf(err, PRIMAL_ENOMEM, "AdamW state of %s: out of memory", p->name);
    }
    s->t = 0;
    return PRIMAL_OK;
}

/* Make the model's trainable set t->trainable, allocating and freeing state to match. */
static int apply_trainable(trainer *t, primal_err *err)
{
    int rc = primal_model_set_trainable(t->m, t->trainable, err);
#ifdef PRIMAL_HAVE_CUDA
    if (rc == PRIMAL_OK && CUDA_RUN(t))
        rc = primal_cuda_model_set_trainable(t->cm, t->trainable, err);
#endif
    for (int i = 0; i < t->np && rc == PRIMAL_OK; i++) {
        if (t->trainable[i] && !t->prev_trainable[i])
            rc = alloc_state(t, i, err);
        else if (!t->trainable[i] && t->prev_trainable[i])
            free_state(t, i);
    }
    if (rc == PRIMAL_OK)
        memcpy(t->prev_trainable, t->trainable, (size_t)t->np);
    return rc;
}

static int run_schedulers(trainer *t, int64_t step, primal_err *err)
{
    primal_sched_view *v = &t->view;
    v->step = step;
    memset(t->trainable, 1, (size_t)t->np);
    v->seq_len = t->e->run.seq_len;
    v->grad_accum = t->e->run.grad_accum;
    v->lr_mult = 1.0;
    for (int i = 0; i < t->e->n_scheds; i++) {
        const primal_scheduler_vt *vt = t->e->scheds[i]->desc->vtable;
        int rc = vt->apply(t->sctx[i], v, err);
        if (rc != PRIMAL_OK)
            return primal_err_prefix(err, "scheduler %s at step %lld",
                                     t->e->scheds[i]->desc->name, (long long)step);
        if (v->seq_len < 1 || v->grad_accum < 1 || !(v->lr_mult >= 0) || !isfinite(v->lr_mult))
            return primal_errf(err, PRIMAL_ERROR,
                               "scheduler %s at step %lld: set seq_len %d, grad_accum %d, "
                               "lr_mult %g",
                               t->e->scheds[i]->desc->name, (long long)step, v->seq_len,
                               v->grad_accum, v->lr_mult);
    }
    return PRIMAL_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Gradients                                                                                  */

static int grad_hook(void *user, primal_param *p, const float *G, int64_t r0, int64_t nrows,
                     primal_err *err)
{
    trainer *t = user;
    int i = param_index(t, p);
    if (i < 0 || !t->ps[i].has_policy)
        return PRIMAL_OK;
    int64_t n = nrows * p->q.cols;
    if (t->nranks > 1 && !t->e->run.reduce_votes) {
        /* gradient all-reduce: the policy sees the mean over the ranks' micro-batches, exactly
         * what one rank with N-times-larger micro-batches would see (with reduce = votes each
         * rank votes on its own tiles and only the votes are summed, in one_step) */
        memcpy(t->gbuf, G, (size_t)n * sizeof *G);
        int rc = primal_dist_sum_f32(t->dist, t->gbuf, (size_t)n, err);
        if (rc != PRIMAL_OK)
            return primal_err_prefix(err, "%s", p->name);
        const float inv = 1.0f / (float)t->nranks;
        for (int64_t k = 0; k < n; k++)
            t->gbuf[k] *= inv;
        G = t->gbuf;
    }
    double sq = 0.0;
    for (int64_t k = 0; k < n; k++)
        sq += (double)G[k] * G[k];
    if (!isfinite(sq)) {
        t->bad_step = 1;
        return PRIMAL_OK;
    }
    t->gsq += sq;
    if (t->pvt->observe != NULL) {
        if (r0 != 0 || nrows != p->q.rows)
            return primal_errf(err, PRIMAL_ERROR,
                               "%s: gradient of %s came in row chunks, which the CPU trainer "
                               "does not replay for a two-pass policy",
                               t->e->policy->desc->name, p->name);
        int rc = t->pvt->observe(t->pctx, t->ps[i].policy, &p->q, G, r0, nrows, &t->ai, err);
        if (rc != PRIMAL_OK)
            return primal_err_prefix(err, "%s: observe %s", t->e->policy->desc->name, p->name);
    }
    int rc = t->pvt->accumulate(t->pctx, t->ps[i].policy, &p->q, G, r0, nrows, &t->ai, err);
    if (rc != PRIMAL_OK)
        return primal_err_prefix(err, "%s: accumulate %s", t->e->policy->desc->name, p->name);
    return PRIMAL_OK;
}

/* AdamW on the float parameters, in place. */
static void adamw(trainer *t, double lr, double clip_scale)
{
    const primal_optim_cfg *o = &t->e->optim;
    for (int i = 0; i < t->np; i++) {
        primal_param *p = primal_model_param(t->m, i);
        pstate *s = &t->ps[i];
        if (!t->trainable[i] || s->n == 0)
            continue;
        float *w = p->is_matrix ? p->q.scale : p->vec;
        const float *g = p->is_matrix ? p->dscale : p->dvec;
        if (w == NULL || g == NULL)
            continue;
        s->t++;
        double bc1 = 1.0 - pow(o->beta1, (double)s->t), bc2 = 1.0 - pow(o->beta2, (double)s->t);
        for (int64_t k = 0; k < s->n; k++) {
            double gk = (double)g[k] * clip_scale;
            s->m[k] = (float)(o->beta1 * s->m[k] + (1.0 - o->beta1) * gk);
            s->v[k] = (float)(o->beta2 * s->v[k] + (1.0 - o->beta2) * gk * gk);
            double mh = s->m[k] / bc1, vh = s->v[k] / bc2;
            w[k] = (float)(w[k] - lr * (mh / (sqrt(vh) + o->eps) + o->weight_decay * w[k]));
        }
    }
}

static double float_grad_sq(trainer *t, int *finite)
{
    double sq = 0.0;
    for (int i = 0; i < t->np; i++) {
        primal_param *p = primal_model_param(t->m, i);
        if (!t->trainable[i] || t->ps[i].n == 0)
            continue;
        const float *g = p->is_matrix ? p->dscale : p->dvec;
        for (int64_t k = 0; g && k < t->ps[i].n; k++)
            sq += (double)g[k] * g[k];
    }
    *finite = isfinite(sq);
    return sq;
}

/* The forward pass on whichever device the run uses. */
static int forward(trainer *t, const int32_t *tokens, const uint8_t *mask, int B, int T,
                   float *loss, primal_err *err)
{
#ifdef PRIMAL_HAVE_CUDA
    if (CUDA_RUN(t))
        return primal_cuda_model_forward(t->cm, tokens, mask, B, T, loss, NULL, err);
#endif
    return primal_model_forward(t->m, tokens, mask, B, T, loss, NULL, err);
}

/* ------------------------------------------------------------------------------------------ */
/* Evaluation                                                                                 */

static int evaluate(trainer *t, double *val_loss, primal_err *err)
{
    const primal_experiment *e = t->e;
    int rc = t->lvt->rewind(t->val_ctx, err);
    if (rc != PRIMAL_OK)
        return rc;
    int rows = e->run.batch, T = e->run.seq_len;
    primal_batch b = {.rows = rows, .seq_len = T};
    b.tokens = malloc((size_t)rows * (size_t)(T + 1) * sizeof *b.tokens);
    b.mask = malloc((size_t)rows * (size_t)T);
    if (b.tokens == NULL || b.mask == NULL) {
        free(b.tokens);
        free(b.mask);
        return primal_errf(err, PRIMAL_ENOMEM, "evaluation: out of memory");
    }
    double sum = 0.0, count = 0.0;
    for (int k = 0; e->run.eval_batches == 0 || k < e->run.eval_batches; k++) {
        b.rows = rows;
        b.seq_len = T;
        rc = t->lvt->next(t->val_ctx, &b, err);
        if (rc == PRIMAL_EOF) {
            rc = PRIMAL_OK;
            break;
        }
        if (rc != PRIMAL_OK)
            break;
        double n = 0;
        for (int64_t j = 0; j < (int64_t)b.rows * T; j++)
            n += b.mask[j];
        if (n == 0)
            continue;
        float loss = 0;
        rc = forward(t, b.tokens, b.mask, b.rows, T, &loss, err);
        if (rc != PRIMAL_OK)
            break;
        sum += (double)loss * n;
        count += n;
    }
    free(b.tokens);
    free(b.mask);
    if (rc == PRIMAL_OK && t->nranks > 1) {
        double sc[2] = {sum, count}; /* each rank evaluated its share of the split */
        rc = primal_dist_sum_f64(t->dist, sc, 2, err);
        sum = sc[0];
        count = sc[1];
    }
    *val_loss = count > 0 ? sum / count : NAN;
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Checkpoints                                                                                */

/* The "train" blob: fixed-width little-endian fields, so a checkpoint moves between hosts. */
typedef struct train_blob {
    int64_t step, tokens, nan_skips;
    uint64_t seed;
} train_blob;

/* Checkpoint helpers that work for host and device state alike. */
static int policy_state_out(trainer *t, int i, void *buf, primal_err *err)
{
    primal_param *p = primal_model_param(t->m, i);
#ifdef PRIMAL_HAVE_CUDA
    if (CUDA_RUN(t))
        return t->pvt->cuda->state_download(t->pctx, &primal_cuda_model_param(t->cm, i)->q,
                                            t->ps[i].policy, buf,
                                            primal_cuda_model_stream(t->cm), err);
#endif
    return t->pvt->state_save(t->pctx, &p->q, t->ps[i].policy, buf, err);
}

static int policy_state_in(trainer *t, int i, const void *buf, size_t n, primal_err *err)
{
    primal_param *p = primal_model_param(t->m, i);
#ifdef PRIMAL_HAVE_CUDA
    if (CUDA_RUN(t))
        return t->pvt->cuda->state_upload(t->pctx, &primal_cuda_model_param(t->cm, i)->q,
                                          t->ps[i].policy, buf, n,
                                          primal_cuda_model_stream(t->cm), err);
#endif
    return t->pvt->state_load(t->pctx, &p->q, t->ps[i].policy, buf, n, err);
}

/* AdamW moments m then v (n floats each) to or from host memory. */
static int moments_copy(trainer *t, int i, float *host, int to_host, primal_err *err)
{
    pstate *s = &t->ps[i];
    size_t bytes = (size_t)s->n * sizeof(float);
#ifdef PRIMAL_HAVE_CUDA
    if (CUDA_RUN(t)) {
        int rc = to_host ? primal_cuda_download_bytes(t->cm, host, s->m, bytes, err)
                         : primal_cuda_upload_bytes(t->cm, s->m, host, bytes, err);
        if (rc == PRIMAL_OK)
            rc = to_host ? primal_cuda_download_bytes(t->cm, host + s->n, s->v, bytes, err)
                         : primal_cuda_upload_bytes(t->cm, s->v, host + s->n, bytes, err);
        return rc;
    }
#endif
    (void)err;
    if (to_host) {
        memcpy(host, s->m, bytes);
        memcpy(host + s->n, s->v, bytes);
    } else {
        memcpy(s->m, host, bytes);
        memcpy(s->v, host + s->n, bytes);
    }
    return PRIMAL_OK;
}

static int save_ckpt(trainer *t, primal_err *err)
{
    int np = t->np;
    int cap = 2 * np + 5, nb = 0;
#ifdef PRIMAL_HAVE_CUDA
    if (CUDA_RUN(t)) {
        int drc = primal_cuda_model_download(t->cm, t->m, err);
        if (drc != PRIMAL_OK)
            return drc;
    }
#endif
    primal_ckpt_blob *blobs = calloc((size_t)cap, sizeof *blobs);
    char **names = calloc((size_t)cap, sizeof *names);
    void **bufs = calloc((size_t)cap, sizeof *bufs);
    int rc = blobs && names && bufs ? PRIMAL_OK : primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    train_blob tb = {t->step, t->tokens, t->nan_skips, t->e->run.seed};
    /* every rank's loader position, each in a fixed-size slot: (uint32 length, bytes) */
    const size_t slot = sizeof(uint32_t) + PRIMAL_LOADER_STATE_MAX;
    unsigned char *mine = calloc(1, slot), *all = calloc((size_t)t->nranks, slot);
    if (mine == NULL || all == NULL)
        rc = primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    if (rc == PRIMAL_OK) {
        const void *pos;
        size_t posn;
        primal_dataq_position(t->dq, &pos, &posn);
        uint32_t len = (uint32_t)posn;
        memcpy(mine, &len, sizeof len);
        memcpy(mine + sizeof len, pos, posn);
        rc = primal_dist_gather(t->dist, mine, slot, all, err);
    }
    if (rc == PRIMAL_OK) {
        blobs[nb++] = (primal_ckpt_blob){"train", &tb, sizeof tb};
        blobs[nb++] = (primal_ckpt_blob){"trainable", t->prev_trainable, (size_t)np};
        blobs[nb++] = (primal_ckpt_blob){"loader", all, slot * (size_t)t->nranks};
    }
#ifdef PRIMAL_HAVE_CUDA
    /* [run] gemm = timed: the algorithms taken, so that a resumed run takes them again (and
     * computes the same bits) instead of timing afresh */
    if (rc == PRIMAL_OK && CUDA_RUN(t) && t->e->run.gemm_timed) {
        size_t n = primal_cuda_model_gemm_export(t->cm, NULL, 0);
        bufs[nb] = malloc(n);
        if (bufs[nb] == NULL)
            rc = primal_errf(err, PRIMAL_ENOMEM, "out of memory");
        else
            blobs[nb] = (primal_ckpt_blob){"gemm", bufs[nb],
                                           primal_cuda_model_gemm_export(t->cm, bufs[nb], n)};
        nb++;
    }
#endif
    for (int i = 0; i < np && rc == PRIMAL_OK; i++) {
        primal_param *p = primal_model_param(t->m, i);
        pstate *s = &t->ps[i];
        if (!t->prev_trainable[i])
            continue;
        if (s->has_policy) {
            size_t n = t->pvt->state_bytes(t->pctx, &p->q, s->policy);
            bufs[nb] = malloc(n ? n : 1);
            names[nb] = malloc(strlen(p->name) + 8);
            if (bufs[nb] == NULL || names[nb] == NULL) {
                rc = primal_errf(err, PRIMAL_ENOMEM, "out of memory");
                break;
            }
            sprintf(names[nb], "policy.%s", p->name);
            rc = policy_state_out(t, i, bufs[nb], err);
            blobs[nb] = (primal_ckpt_blob){names[nb], bufs[nb], n};
            nb++;
        }
        if (s->n > 0 && rc == PRIMAL_OK) {
            size_t n = sizeof(int64_t) + 2 * (size_t)s->n * sizeof(float);
            unsigned char *buf = malloc(n);
            names[nb] = malloc(strlen(p->name) + 8);
            bufs[nb] = buf;
            if (buf == NULL || names[nb] == NULL) {
                rc = primal_errf(err, PRIMAL_ENOMEM, "out of memory");
                break;
            }
            memcpy(buf, &s->t, sizeof s->t);
            /* m and v, staged through an aligned buffer (the blob's floats are not) */
            float *mv = malloc(2 * (size_t)s->n * sizeof *mv);
            rc = mv ? moments_copy(t, i, mv, 1, err) : primal_errf(err, PRIMAL_ENOMEM, "out of memory");
            if (rc == PRIMAL_OK)
                memcpy(buf + sizeof s->t, mv, 2 * (size_t)s->n * sizeof(float));
            free(mv);
            sprintf(names[nb], "adam.%s", p->name);
            blobs[nb] = (primal_ckpt_blob){names[nb], buf, n};
            nb++;
        }
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/ckpt-%08lld.safetensors", t->dir, (long long)t->step);
    if (rc == PRIMAL_OK && t->rank == 0) { /* the ranks are identical: one writes */
        char *ini = primal_experiment_resolved(t->e);
        rc = primal_ckpt_save(path, t->m, ini ? ini : "", blobs, nb, err);
        free(ini);
    }
    for (int i = 0; i < cap && bufs && names; i++) {
        free(bufs[i]);
        free(names[i]);
    }
    free(blobs);
    free(names);
    free(bufs);
    free(mine);
    free(all);
    if (rc == PRIMAL_OK) {
        emit(t, (primal_event){.kind = PRIMAL_EV_CKPT, .step = t->step, .message = path});
        prune_ckpts(t);
    }
    return rc;
}

static int cmp_desc(const void *a, const void *b)
{
    return -strcmp(*(char *const *)a, *(char *const *)b);
}

/* Restore from the newest checkpoint of the run directory that verifies; warn about newer
 * ones that do not.  *found is 0 when there is none at all. */
static int resume(trainer *t, int *found, primal_err *err)
{
    *found = 0;
    DIR *d = opendir(t->dir);
    if (d == NULL)
        return PRIMAL_OK;
    char **names = NULL;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!ckpt_name(de->d_name, NULL))
            continue;
        char **nn = realloc(names, (size_t)(n + 1) * sizeof *names);
        if (nn == NULL)
            break;
        names = nn;
        names[n] = strdup(de->d_name);
        if (names[n] != NULL)
            n++;
    }
    closedir(d);
    if (n > 1) /* names is NULL when the directory holds none (qsort's argument is nonnull) */
        qsort(names, (size_t)n, sizeof *names, cmp_desc);
    int rc = PRIMAL_OK;
    primal_ckpt *c = NULL;
    for (int i = 0; i < n && c == NULL; i++) {
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", t->dir, names[i]);
        primal_err e2;
        primal_err_clear(&e2);
        if (primal_ckpt_open(path, &c, &e2) != PRIMAL_OK) {
            char msg[PRIMAL_ERR_MAX + 64];
            snprintf(msg, sizeof msg, "ignoring a checkpoint that does not verify: %s", e2.msg);
            warn(t, msg);
            c = NULL;
        }
    }
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    if (c == NULL)
        return PRIMAL_OK;
    *found = 1;
    const void *data;
    size_t len;
    train_blob tb;
    rc = primal_ckpt_get_blob(c, "train", &data, &len);
    if (rc != PRIMAL_OK || len != sizeof tb) {
        rc = primal_errf(err, PRIMAL_EIO, "%s: no valid training state (state.train)",
                         primal_ckpt_path(c));
        goto out;
    }
    memcpy(&tb, data, sizeof tb);
    if (tb.seed != t->e->run.seed) {
        rc = primal_errf(err, PRIMAL_ECONFIG, "%s: saved with seed %llu, [run] seed is %llu",
                         primal_ckpt_path(c), (unsigned long long)tb.seed,
                         (unsigned long long)t->e->run.seed);
        goto out;
    }
    rc = primal_ckpt_load_model(c, t->m, err);
#ifdef PRIMAL_HAVE_CUDA
    if (rc == PRIMAL_OK && CUDA_RUN(t))
        rc = primal_cuda_model_upload(t->cm, t->m, err);
    if (rc == PRIMAL_OK && CUDA_RUN(t) && t->e->run.gemm_timed &&
        primal_ckpt_get_blob(c, "gemm", &data, &len) == PRIMAL_OK) {
        int taken = 0;
        rc = primal_cuda_model_gemm_import(t->cm, data, len, &taken, err);
        if (rc != PRIMAL_OK)
            rc = primal_err_prefix(err, "%s: state.gemm", primal_ckpt_path(c));
        else if (taken == 0)
            warn(t, "the checkpoint's GEMM plans come from another GPU or cuBLAS version: "
                    "timing them again, so this run's bits may differ from the first's");
    }
#endif
    if (rc != PRIMAL_OK)
        goto out;
    if (primal_ckpt_get_blob(c, "trainable", &data, &len) != PRIMAL_OK ||
        len != (size_t)t->np) {
        rc = primal_errf(err, PRIMAL_EIO, "%s: no valid state.trainable", primal_ckpt_path(c));
        goto out;
    }
    memcpy(t->trainable, data, len);
    rc = apply_trainable(t, err);
    for (int i = 0; i < t->np && rc == PRIMAL_OK; i++) {
        primal_param *p = primal_model_param(t->m, i);
        pstate *s = &t->ps[i];
        if (!t->trainable[i])
            continue;
        char name[160];
        if (s->has_policy) {
            snprintf(name, sizeof name, "policy.%s", p->name);
            if (primal_ckpt_get_blob(c, name, &data, &len) != PRIMAL_OK) {
                rc = primal_errf(err, PRIMAL_EIO, "%s: no state.%s", primal_ckpt_path(c), name);
                break;
            }
            rc = policy_state_in(t, i, data, len, err);
            if (rc != PRIMAL_OK) {
                rc = primal_err_prefix(err, "%s: %s", primal_ckpt_path(c), name);
                break;
            }
        }
        if (s->n > 0) {
            snprintf(name, sizeof name, "adam.%s", p->name);
            size_t want = sizeof(int64_t) + 2 * (size_t)s->n * sizeof(float);
            if (primal_ckpt_get_blob(c, name, &data, &len) != PRIMAL_OK || len != want) {
                rc = primal_errf(err, PRIMAL_EIO, "%s: state.%s missing or of the wrong size",
                                 primal_ckpt_path(c), name);
                break;
            }
            const unsigned char *b = data;
            float *mv = malloc(2 * (size_t)s->n * sizeof *mv);
            if (mv == NULL) {
                rc = primal_errf(err, PRIMAL_ENOMEM, "out of memory");
                break;
            }
            memcpy(mv, b + sizeof s->t, 2 * (size_t)s->n * sizeof(float));
            int64_t st;
            memcpy(&st, b, sizeof st);
            rc = moments_copy(t, i, mv, 0, err);
            free(mv);
            if (rc != PRIMAL_OK)
                break;
            s->t = st;
        }
    }
    if (rc == PRIMAL_OK) {
        const size_t slot = sizeof(uint32_t) + PRIMAL_LOADER_STATE_MAX;
        if (primal_ckpt_get_blob(c, "loader", &data, &len) != PRIMAL_OK || len % slot != 0) {
            rc = primal_errf(err, PRIMAL_EIO, "%s: no valid state.loader", primal_ckpt_path(c));
            goto out;
        }
        if (len / slot != (size_t)t->nranks) {
            /* the loaders shard rows by rank, so another rank count reads other rows */
            rc = primal_errf(err, PRIMAL_ECONFIG,
                             "%s: written by a run of %zu ranks; resume it with %zu ranks",
                             primal_ckpt_path(c), len / slot, len / slot);
            goto out;
        }
        const unsigned char *mine = (const unsigned char *)data + slot * (size_t)t->rank;
        uint32_t plen;
        memcpy(&plen, mine, sizeof plen);
        if (plen > PRIMAL_LOADER_STATE_MAX) {
            rc = primal_errf(err, PRIMAL_EIO, "%s: corrupt state.loader", primal_ckpt_path(c));
            goto out;
        }
        rc = primal_dataq_restore(t->dq, mine + sizeof plen, plen, err);
    }
    if (rc == PRIMAL_OK) {
        t->step = tb.step;
        t->tokens = tb.tokens;
        t->nan_skips = tb.nan_skips;
        char msg[4600];
        snprintf(msg, sizeof msg, "resumed from %s at step %lld", primal_ckpt_path(c),
                 (long long)tb.step);
        emit(t, (primal_event){.kind = PRIMAL_EV_START, .step = t->step, .message = msg});
    }
out:
    primal_ckpt_close(c);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Set-up and tear-down                                                                       */

static int open_model(trainer *t, primal_err *err)
{
    primal_experiment *e = t->e;
    const char *init = e->model_init;
    int rc;
    if (strcmp(init, "random") == 0) {
        rc = primal_model_create(&e->model, primal_experiment_grid_for, e, &t->m, err);
        if (rc == PRIMAL_OK)
            rc = primal_model_init_random(t->m, e->run.seed, (float)e->init_std, err);
        return rc;
    }
    struct stat st;
    if (stat(init, &st) != 0)
        return primal_cfg_errf(e->model_c, "init", err, PRIMAL_ECONFIG,
                               "%s: no such file or directory", init);
    if (S_ISDIR(st.st_mode)) {
        rc = primal_hf_load_model(init, primal_experiment_grid_for, e, &t->m, err);
        if (rc == PRIMAL_OK)
            e->model = *primal_model_cfg(t->m); /* the Hugging Face config's shape wins */
        return rc;
    }
    rc = primal_ckpt_open(init, &t->init_ckpt, err);
    if (rc != PRIMAL_OK)
        return rc;
    primal_model_config mc;
    rc = primal_ckpt_model_config(t->init_ckpt, &mc, err);
    if (rc != PRIMAL_OK)
        return rc;
    e->model = mc; /* the checkpoint's shape wins over [model]'s */
    rc = primal_model_create(&e->model, primal_experiment_grid_for, e, &t->m, err);
    if (rc == PRIMAL_OK)
        rc = primal_ckpt_load_model(t->init_ckpt, t->m, err);
    return rc;
}

static void trainer_free(trainer *t)
{
    if (t->ps != NULL)
        for (int i = 0; i < t->np; i++)
            free_state(t, i);
    free(t->ps);
#ifdef PRIMAL_HAVE_CUDA
    if (t->dstats != NULL)
        primal_cuda_free(t->cm, t->dstats, (size_t)t->np * sizeof *t->dstats);
    free(t->hstats);
    primal_cuda_model_free(t->cm);
    t->cm = NULL;
#endif
    if (t->pctx != NULL && t->pvt->destroy != NULL)
        t->pvt->destroy(t->pctx);
    for (int i = 0; t->sctx && i < t->e->n_scheds; i++) {
        const primal_scheduler_vt *vt = t->e->scheds[i]->desc->vtable;
        if (vt->destroy != NULL)
            vt->destroy(t->sctx[i]);
    }
    free(t->sctx);
    primal_dataq_close(t->dq);
    if (t->val_ctx != NULL)
        t->lvt->close(t->val_ctx);
    primal_tokenizer_close(t->tok_train);
    primal_tokenizer_close(t->tok_val);
    primal_tokenizer_close(t->tok_gen);
    primal_model_free(t->m);
    primal_ckpt_close(t->init_ckpt);
    free(t->names);
    free(t->layers);
    free(t->trainable);
    free(t->prev_trainable);
    free(t->gbuf);
    if (t->log_fd >= 0)
        close(t->log_fd);
    t->log_fd = -1;
}

static int setup(trainer *t, primal_err *err)
{
    primal_experiment *e = t->e;
    int rc = primal_experiment_check_run(e, primal_dist_size(t->o->dist), err);
    if (rc != PRIMAL_OK)
        return rc;
    t->dist = t->o->dist;
    t->rank = primal_dist_rank(t->dist);
    t->nranks = primal_dist_size(t->dist);
    rc = primal_tokenizer_open(e->tokenizer, &t->tok_train, err);
    if (rc == PRIMAL_OK)
        rc = primal_tokenizer_open(e->tokenizer, &t->tok_val, err);
    if (rc == PRIMAL_OK)
        rc = primal_tokenizer_open(e->tokenizer, &t->tok_gen, err);
    if (rc != PRIMAL_OK)
        return primal_err_prefix(err, "[data] tokenizer");
    int32_t tv = primal_tokenizer_vocab(t->tok_train);
    if (e->model.vocab == 0)
        e->model.vocab = tv;
    else if (e->model.vocab < tv)
        return primal_cfg_errf(e->model_c, "vocab", err, PRIMAL_ECONFIG,
                               "%d is smaller than the tokenizer's vocabulary (%d)",
                               e->model.vocab, (int)tv);
    rc = open_model(t, err);
    if (rc != PRIMAL_OK)
        return rc;
    primal_model_set_opts(t->m, &(primal_model_opts){e->run.threads, e->run.recompute});
    t->np = primal_model_nparams(t->m);
    t->ps = calloc((size_t)t->np, sizeof *t->ps);
    t->names = calloc((size_t)t->np, sizeof *t->names);
    t->layers = calloc((size_t)t->np, sizeof *t->layers);
    t->trainable = calloc((size_t)t->np, 1);
    t->prev_trainable = calloc((size_t)t->np, 1);
    t->sctx = calloc((size_t)e->n_scheds + 1, sizeof *t->sctx);
    if (!t->ps || !t->names || !t->layers || !t->trainable || !t->prev_trainable || !t->sctx)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    for (int i = 0; i < t->np; i++) {
        primal_param *p = primal_model_param(t->m, i);
        t->names[i] = p->name;
        t->layers[i] = p->layer;
    }
    /* nothing is trainable until the first step's schedule says so */
    rc = primal_model_set_trainable(t->m, t->trainable, err);
    if (rc != PRIMAL_OK)
        return rc;
#ifdef PRIMAL_HAVE_CUDA
    if (e->run.device == PRIMAL_DEVICE_CUDA) {
        primal_cuda_opts co = {.precision = PRIMAL_CUDA_BF16, .recompute = e->run.recompute,
                               .recompute_blocks = e->run.recompute_blocks,
                               .recompute_residual = e->run.recompute_residual,
                               .norm_bf16 = e->run.norm_bf16,
                               .head_ahead = e->run.head_ahead,
                               .logits_bf16 = e->run.logits_bf16,
                               .grads_inline = !e->run.grad_stream,
                               .gemm_timed = e->run.gemm_timed};
        int layers = primal_model_cfg(t->m)->layers;
        if (co.recompute_blocks > layers) /* the model may come from a checkpoint */
            return primal_cfg_errf(e->run_c, "recompute_blocks", err, PRIMAL_ECONFIG,
                                   "%d blocks, but the model has %d", co.recompute_blocks,
                                   layers);
        if (((const primal_policy_vt *)e->policy->desc->vtable)->cuda->observe != NULL) {
            /* a two-pass policy must see a matrix's whole G at once: no row chunks (the G
             * workspace then holds the largest matrix, e.g. the vocabulary x dim head) */
            for (int i = 0; i < t->np; i++) {
                primal_param *p = primal_model_param(t->m, i);
                if (p->is_matrix && p->q.rows > co.chunk_rows)
                    co.chunk_rows = p->q.rows;
            }
        }
        rc = primal_cuda_model_create(t->m, &co, (primal_cuda_model **)&t->cm, err);
        if (rc != PRIMAL_OK)
            return rc;
    }
#endif
    t->view = (primal_sched_view){
        .total_steps = e->run.steps,
        .n_layers = e->model.layers,
        .n_tensors = t->np,
        .tensor_names = t->names,
        .tensor_layer = t->layers,
        .trainable = t->trainable,
    };
    t->pvt = e->policy->desc->vtable;
    primal_policy_info pinfo = {e->run.seed, e->run.steps, e->run.device,
                                e->run.reduce_votes};
    rc = t->pvt->create(e->policy_c, &pinfo, &t->pctx, err);
    if (rc != PRIMAL_OK)
        return primal_err_prefix(err, "%s", e->policy->desc->name);
    for (int i = 0; i < e->n_scheds; i++) {
        const primal_scheduler_vt *vt = e->scheds[i]->desc->vtable;
        rc = vt->create(e->sched_cs[i], &t->sctx[i], err);
        if (rc != PRIMAL_OK)
            return primal_err_prefix(err, "%s", e->scheds[i]->desc->name);
    }
    t->lvt = e->loader->desc->vtable;
    primal_loader_info li = {t->tok_train, PRIMAL_SPLIT_TRAIN, e->run.seed, t->rank, t->nranks};
    rc = primal_dataq_open(e->loader, e->loader_c, &li, e->run.batch, e->run.seq_len, 4, &t->dq,
                           err);
    if (rc != PRIMAL_OK)
        return primal_err_prefix(err, "[data] %s", e->loader->desc->name);
    primal_loader_info vi = {t->tok_val, PRIMAL_SPLIT_VAL, e->run.seed, t->rank, t->nranks};
    rc = t->lvt->open(e->loader_c, &vi, &t->val_ctx, err);
    if (rc == PRIMAL_EOF) {
        t->val_ctx = NULL;
        rc = PRIMAL_OK;
    } else if (rc != PRIMAL_OK) {
        return primal_err_prefix(err, "[data] %s (validation split)", e->loader->desc->name);
    } else if (t->lvt->rewind == NULL) {
        return primal_errf(err, PRIMAL_EABI, "%s: has a validation split but no rewind()",
                           e->loader->desc->name);
    }
    t->have_val = t->val_ctx != NULL;
    if (t->nranks > 1) {
        int64_t biggest = 0;
        for (int i = 0; i < t->np; i++) {
            primal_param *p = primal_model_param(t->m, i);
            if (p->is_matrix && p->q.rows * p->q.cols > biggest)
                biggest = p->q.rows * p->q.cols;
        }
        t->gbuf = malloc((size_t)biggest * sizeof *t->gbuf);
        if (t->gbuf == NULL)
            return primal_errf(err, PRIMAL_ENOMEM, "gradient all-reduce buffer: out of memory");
    }
    char *ini = primal_experiment_resolved(e);
    if (ini == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    rc = primal_dist_check_same(t->dist, "resolved configuration", ini, strlen(ini), err);
    free(ini);
    return rc;
}

/* The ranks of a data-parallel run must hold the same weights: compare a digest of every
 * parameter (index, scales, vectors) across them. */
static int check_weights(trainer *t, primal_err *err)
{
    if (t->nranks == 1)
        return PRIMAL_OK;
    char *digests = malloc((size_t)t->np * 3 * 65 + 1);
    if (digests == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    size_t n = 0;
    for (int i = 0; i < t->np; i++) {
        primal_param *p = primal_model_param(t->m, i);
        if (p->is_matrix && p->q.index != NULL)
            primal_sha256_hex(p->q.index, (size_t)(p->q.rows * p->q.row_stride), digests + n);
        else if (p->is_matrix)
            primal_sha256_hex(p->q.dense, (size_t)(p->q.rows * p->q.cols) * sizeof(float),
                              digests + n);
        else
            primal_sha256_hex(p->vec, (size_t)p->n * sizeof(float), digests + n);
        n += 64;
        if (p->is_matrix && p->q.scale != NULL) {
            primal_sha256_hex(p->q.scale, (size_t)p->q.rows * sizeof(float), digests + n);
            n += 64;
        }
    }
    int rc = primal_dist_check_same(t->dist, "weights", digests, n, err);
    free(digests);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* The loop                                                                                   */

/* One line of log.jsonl (rank 0).  A failed write (a full disk) is cut back to the last whole
 * line and stops the run. */
static int log_json(trainer *t, json_t *obj, primal_err *err)
{
    if (t->log_fd < 0) {
        json_decref(obj);
        return PRIMAL_OK;
    }
    char *s = obj != NULL ? json_dumps(obj, JSON_COMPACT | JSON_REAL_PRECISION(8)) : NULL;
    json_decref(obj);
    if (s == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "%s: a log line: out of memory", t->log_path);
    size_t n = strlen(s);
    s[n++] = '\n'; /* over the terminating NUL: the line is written by length */
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(t->log_fd, s + done, n - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            int e = w < 0 ? errno : ENOSPC;
            free(s);
            if (ftruncate(t->log_fd, t->log_bytes) != 0) {
                /* not a regular file (/dev/full): nothing to cut back */
            }
            return primal_errf(err, PRIMAL_EIO, "%s: cannot write: %s; training stops at step %lld",
                               t->log_path, strerror(e), (long long)t->step);
        }
        done += (size_t)w;
    }
    free(s);
    t->log_bytes += (off_t)n;
    return PRIMAL_OK;
}

static int report_schedule(trainer *t, int seq_changed, int accum_changed, int old_seq,
                           int old_accum, primal_err *err)
{
    int64_t on = 0, off = 0;
    for (int i = 0; i < t->np; i++) {
        on += t->trainable[i] && !t->prev_trainable[i];
        off += !t->trainable[i] && t->prev_trainable[i];
    }
    if (on == 0 && off == 0 && !seq_changed && !accum_changed)
        return PRIMAL_OK;
    int64_t ntrain = 0;
    for (int i = 0; i < t->np; i++)
        ntrain += t->trainable[i];
    char msg[512];
    snprintf(msg, sizeof msg,
             "step %lld: %lld tensors trainable (+%lld, -%lld), seq_len %d%s, grad_accum %d%s",
             (long long)t->step, (long long)ntrain, (long long)on, (long long)off,
             t->view.seq_len, seq_changed ? " (changed)" : "", t->view.grad_accum,
             accum_changed ? " (changed)" : "");
    json_t *j = json_pack("{s:s,s:I,s:I,s:I,s:I,s:i,s:i,s:i,s:i}", "event", "schedule", "step",
                          (json_int_t)t->step, "trainable", (json_int_t)ntrain, "unfrozen",
                          (json_int_t)on, "frozen", (json_int_t)off, "seq_len", t->view.seq_len,
                          "grad_accum", t->view.grad_accum, "prev_seq_len", old_seq,
                          "prev_grad_accum", old_accum);
    int rc = log_json(t, j, err);
    emit(t, (primal_event){.kind = PRIMAL_EV_SCHED, .step = t->step, .message = msg});
    return rc;
}

/* After the first step every GEMM shape has its plan: on a CUDA run, log how many there are and,
 * with [run] gemm = timed, what the timing gained over cuBLAS's heuristic choices (one call of
 * each shape, the clock's time of the first step). */
static int log_gemm_plans(trainer *t, primal_err *err)
{
#ifdef PRIMAL_HAVE_CUDA
    if (!CUDA_RUN(t))
        return PRIMAL_OK;
    primal_cuda_gemm_stats g;
    primal_cuda_model_gemm_stats(t->cm, &g);
    json_t *j = json_pack("{s:s,s:I,s:s,s:i,s:i,s:f,s:f}", "event", "gemm", "step",
                          (json_int_t)t->step, "mode", t->e->run.gemm_timed ? "timed" : "heuristic",
                          "shapes", g.shapes, "timed", g.timed, "heuristic_us", g.heuristic_us,
                          "chosen_us", g.chosen_us);
    return log_json(t, j, err);
#else
    (void)t;
    (void)err;
    return PRIMAL_OK;
#endif
}

/* After --resume from step s, drop the log lines of steps after s (written by the run that
 * went on past its last checkpoint), so that log.jsonl reads as one uninterrupted run; *time_s
 * gets the largest time_s of the lines kept (0 if none), where the resumed run's clock goes on. */
static int truncate_log(const char *path, int64_t s, double *time_s, primal_err *err)
{
    *time_s = 0;
    FILE *in = fopen(path, "r");
    if (in == NULL)
        return PRIMAL_OK; /* nothing logged yet */
    char *kept = NULL;
    size_t klen = 0;
    FILE *out = open_memstream(&kept, &klen);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while (out != NULL && (n = getline(&line, &cap, in)) > 0) {
        json_t *j = json_loads(line, 0, NULL);
        json_t *step = j ? json_object_get(j, "step") : NULL;
        if (step == NULL || !json_is_integer(step) || json_integer_value(step) <= s) {
            fwrite(line, 1, (size_t)n, out);
            json_t *ts = step != NULL ? json_object_get(j, "time_s") : NULL;
            if (ts != NULL && json_is_number(ts) && json_number_value(ts) > *time_s)
                *time_s = json_number_value(ts);
        }
        json_decref(j);
    }
    free(line);
    fclose(in);
    if (out == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    fclose(out);
    int rc = write_file_atomic(path, kept, err);
    free(kept);
    return rc;
}

/* Bytes of flip-policy state the run holds now: the policy's state_bytes over every matrix that
 * has state (the trainable ones), on the device on a CUDA run. */
static size_t policy_state_bytes(trainer *t)
{
    size_t n = 0;
    for (int i = 0; i < t->np; i++) {
        primal_param *p = primal_model_param(t->m, i);
        if (p->is_matrix && t->ps[i].has_policy)
            n += t->pvt->state_bytes(t->pctx, &p->q, t->ps[i].policy);
    }
    return n;
}

/* What the run holds per matrix weight (every matrix's, trainable or not, the same divisor for
 * all three): the policy's state (returned), the index (*index_bytes: a dense matrix's float32
 * values count here, as its storage) and the float parameters (*float_bytes: each quantised
 * matrix's row scales, the vectors (norms, biases), and the AdamW moments m and v the trainer
 * allocated for the trainable ones; a dense matrix's moments are its policy's state). */
static double state_bytes_per_weight(trainer *t, double *index_bytes, double *float_bytes)
{
    double weights = 0, idx = 0, flt = 0;
    for (int i = 0; i < t->np; i++) {
        primal_param *p = primal_model_param(t->m, i);
        if (p->is_matrix) {
            double w = (double)p->q.rows * (double)p->q.cols;
            weights += w;
            idx += p->q.dense ? 4.0 * w : (double)p->q.rows * (double)p->q.row_stride;
            if (p->q.dense == NULL)
                flt += (double)sizeof(float) * (double)p->q.rows;
        } else {
            flt += (double)sizeof(float) * (double)p->n;
        }
        if (t->ps[i].m != NULL)
            flt += 2.0 * (double)sizeof(float) * (double)t->ps[i].n;
    }
    double state = (double)policy_state_bytes(t);
    *index_bytes = weights > 0 ? idx / weights : 0;
    *float_bytes = weights > 0 ? flt / weights : 0;
    return weights > 0 ? state / weights : 0;
}

/* After a step's micro-batches on several ranks: the float parameters' gradients, the loss and
 * the "skip this step" verdict become the same on every rank. */
static int reduce_step(trainer *t, double *loss_sum, primal_err *err)
{
    const float inv = 1.0f / (float)t->nranks;
    for (int i = 0; i < t->np; i++) {
        primal_param *p = primal_model_param(t->m, i);
        float *g = p->is_matrix ? p->dscale : p->dvec;
        int64_t n = p->is_matrix ? (p->q.dense ? 0 : p->q.rows) : p->n;
        if (!t->trainable[i] || g == NULL || n == 0)
            continue;
        int rc = primal_dist_sum_f32(t->dist, g, (size_t)n, err);
        if (rc != PRIMAL_OK)
            return primal_err_prefix(err, "%s", p->name);
        for (int64_t k = 0; k < n; k++)
            g[k] *= inv;
    }
    int rc = primal_dist_sum_f64(t->dist, loss_sum, 1, err);
    *loss_sum /= t->nranks;
    if (rc == PRIMAL_OK)
        rc = primal_dist_max_int(t->dist, &t->bad_step, err);
    return rc;
}

#ifdef PRIMAL_HAVE_CUDA
/* The GPU twin of grad_hook: G is a device tile on the model's stream. */
static int grad_hook_cuda(void *user, primal_cuda_param *p, const float *G, int64_t r0,
                          int64_t nrows, void *stream, primal_err *err)
{
    trainer *t = user;
    pstate *s = &t->ps[p->index];
    if (!s->has_policy)
        return PRIMAL_OK;
    const primal_policy_cuda_vt *cvt = t->pvt->cuda;
    int rc = PRIMAL_OK; /* the clipping norm's Σ G² is backward's (primal_cuda_sumsq_read) */
    t->ai.g_absmax = primal_cuda_grad_absmax(t->cm); /* found in the same pass */
    if (cvt->observe != NULL) {
        if (r0 != 0 || nrows != p->q.rows)
            return primal_errf(err, PRIMAL_ERROR,
                               "%s: gradient of %s came in row chunks, which the trainer does "
                               "not replay for a two-pass policy (raise the chunk size)",
                               t->e->policy->desc->name, p->host->name);
        rc = cvt->observe(t->pctx, s->policy, &p->q, G, r0, nrows, &t->ai, stream, err);
    }
    if (rc == PRIMAL_OK)
        rc = cvt->accumulate(t->pctx, s->policy, &p->q, G, r0, nrows, &t->ai, stream, err);
    t->ai.g_absmax = NULL;
    if (rc != PRIMAL_OK)
        return primal_err_prefix(err, "%s on the GPU, %s", t->e->policy->desc->name,
                                 p->host->name);
    return PRIMAL_OK;
}

/* One optimizer step on the GPU: the same sequence as one_step, with the gradients, AdamW and
 * the policy's work on the device; only the loss and the step's statistics come back. */
static int one_step_cuda(trainer *t, double *loss_out, primal_step_stats *tot, primal_err *err)
{
    const primal_experiment *e = t->e;
    int k = t->view.grad_accum, T = t->view.seq_len;
    double mult = lr_factor(e, t->step) * t->view.lr_mult;
    int rc = primal_cuda_model_zero_grad(t->cm, err);
    t->bad_step = 0;
    double loss_sum = 0;
    for (int micro = 0; micro < k && rc == PRIMAL_OK; micro++) {
        const primal_batch *b = NULL;
        rc = primal_dataq_next(t->dq, T, &b, err);
        if (rc != PRIMAL_OK)
            return primal_err_prefix(err, "[data] %s", e->loader->desc->name);
        float loss = 0;
        rc = primal_cuda_model_forward_train(t->cm, b->tokens, b->mask, b->rows, T,
                                             1.0f / (float)k, &loss, err);
        if (rc != PRIMAL_OK)
            return rc;
        t->tokens += (int64_t)b->rows * T;
        if (!isfinite(loss)) {
            t->bad_step = 1;
            continue;
        }
        loss_sum += loss;
        t->ai = (primal_accum_info){.step = t->step, .micro = micro, .n_micro = k,
                                    .seed = e->run.seed, .lr = mult, .lr_mult = mult};
        rc = primal_cuda_model_backward(t->cm, 1.0f / (float)k, grad_hook_cuda, t, err);
    }
    double gsq = 0;
    if (rc == PRIMAL_OK)
        rc = primal_cuda_sumsq_float_grads(t->cm, err);
    if (rc == PRIMAL_OK)
        rc = primal_cuda_sumsq_read(t->cm, &gsq, 1, err);
    if (rc != PRIMAL_OK)
        return rc;
    *loss_out = loss_sum / k;
    if (!isfinite(gsq))
        t->bad_step = 1;
    if (t->bad_step)
        return PRIMAL_OK;
    double clip_scale = 1.0, gnorm = sqrt(gsq);
    t->gnorm = gnorm;
    if (e->optim.clip > 0 && gnorm > e->optim.clip)
        clip_scale = e->optim.clip / gnorm;
    /* AdamW over every trainable float tensor in one launch */
    primal_cuda_adamw_tensor *list = malloc((size_t)t->np * sizeof *list);
    if (list == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    int n = 0;
    for (int i = 0; i < t->np; i++) {
        primal_cuda_param *cp = primal_cuda_model_param(t->cm, i);
        pstate *s = &t->ps[i];
        if (!t->trainable[i] || s->n == 0 || s->m == NULL)
            continue;
        s->t++;
        list[n++] = (primal_cuda_adamw_tensor){
            .w = cp->is_matrix ? cp->q.scale : cp->vec,
            .g = cp->is_matrix ? cp->dscale : cp->dvec,
            .m = s->m, .v = s->v, .n = s->n, .t = s->t};
    }
    const primal_optim_cfg *o = &e->optim;
    primal_cuda_adamw_hp hp = {o->lr * mult, o->beta1, o->beta2, o->eps, o->weight_decay,
                               clip_scale};
    rc = n > 0 ? primal_cuda_adamw(t->cm, list, n, &hp, err) : PRIMAL_OK;
    free(list);
    if (rc != PRIMAL_OK)
        return rc;
    /* With step_async every tensor steps before the one wait for all their counts; step()
     * would wait after each, leaving the GPU idle while the next tensor's kernels are queued.
     * Either way each tensor's counts land in hstats[i], summed once below. */
    const primal_policy_cuda_vt *cvt = t->pvt->cuda;
    int async = cvt->size >= offsetof(primal_policy_cuda_vt, step_async) + sizeof cvt->step_async &&
                cvt->step_async != NULL;
    if (t->hstats == NULL) {
        t->hstats = malloc((size_t)t->np * sizeof *t->hstats);
        if (t->hstats == NULL)
            return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    }
    if (async && t->dstats == NULL) {
        rc = primal_cuda_alloc(t->cm, (size_t)t->np * sizeof *t->dstats, (void **)&t->dstats,
                               err);
        if (rc != PRIMAL_OK)
            return rc;
    }
    primal_step_info si = {t->step, k, e->run.seed, mult, clip_scale};
    void *stream = primal_cuda_model_stream(t->cm);
    if (async) /* ABI 1.4: the slots arrive zeroed */
        rc = primal_cuda_zero_bytes(t->cm, t->dstats, (size_t)t->np * sizeof *t->dstats, err);
    if (rc != PRIMAL_OK)
        return rc;
    for (int i = 0; i < t->np; i++) {
        primal_cuda_param *cp = primal_cuda_model_param(t->cm, i);
        if (!t->ps[i].has_policy)
            continue;
        if (async)
            rc = cvt->step_async(t->pctx, t->ps[i].policy, &cp->q, &si, t->dstats + i, stream,
                                 err);
        else {
            t->hstats[i] = (primal_step_stats){0, 0, 0};
            rc = cvt->step(t->pctx, t->ps[i].policy, &cp->q, &si, t->hstats + i, stream, err);
        }
        if (rc != PRIMAL_OK)
            return primal_err_prefix(err, "%s: step %s", e->policy->desc->name,
                                     cp->host->name);
    }
    if (async)
        rc = primal_cuda_download_bytes(t->cm, t->hstats, t->dstats,
                                        (size_t)t->np * sizeof *t->hstats, err);
    for (int i = 0; i < t->np && rc == PRIMAL_OK; i++)
        if (t->ps[i].has_policy) {
            tot->flips += t->hstats[i].flips;
            tot->saturated += t->hstats[i].saturated;
            tot->weights += t->hstats[i].weights;
        }
    return rc;
}
#endif

static int one_step(trainer *t, double *loss_out, primal_step_stats *tot, primal_err *err)
{
#ifdef PRIMAL_HAVE_CUDA
    if (CUDA_RUN(t))
        return one_step_cuda(t, loss_out, tot, err);
#endif
    const primal_experiment *e = t->e;
    int k = t->view.grad_accum, T = t->view.seq_len;
    double mult = lr_factor(e, t->step) * t->view.lr_mult;
    primal_model_zero_grad(t->m);
    t->gsq = 0;
    t->bad_step = 0;
    double loss_sum = 0;
    for (int micro = 0; micro < k; micro++) {
        const primal_batch *b = NULL;
        int rc = primal_dataq_next(t->dq, T, &b, err);
        if (rc != PRIMAL_OK)
            return primal_err_prefix(err, "[data] %s", e->loader->desc->name);
        float loss = 0;
        rc = primal_model_forward(t->m, b->tokens, b->mask, b->rows, T, &loss, NULL, err);
        if (rc != PRIMAL_OK)
            return rc;
        t->tokens += (int64_t)b->rows * T * t->nranks;
        if (!isfinite(loss)) {
            t->bad_step = 1;
            /* with several ranks, backward still runs: the others wait in its all-reduces,
             * and the summed tiles carry the non-finite values to every rank's check */
            if (t->nranks == 1)
                continue;
        } else {
            loss_sum += loss;
        }
        t->ai = (primal_accum_info){.step = t->step, .micro = micro, .n_micro = k,
                                    .seed = e->run.seed, .lr = mult, .lr_mult = mult};
        rc = primal_model_backward(t->m, 1.0f / (float)k, grad_hook, t, err);
        if (rc != PRIMAL_OK)
            return rc;
    }
    if (t->nranks > 1) {
        int rc = reduce_step(t, &loss_sum, err);
        if (rc != PRIMAL_OK)
            return rc;
        if (e->run.reduce_votes) {
            /* vote all-reduce: the integer increments of every rank, summed exactly, once a
             * step; the gradient tiles themselves were never sent (grad_hook) */
            for (int i = 0; i < t->np; i++) {
                primal_param *p = primal_model_param(t->m, i);
                int32_t *buf;
                size_t n;
                if (!t->ps[i].has_policy)
                    continue;
                rc = t->pvt->vote_increments(t->pctx, t->ps[i].policy, &p->q, &buf, &n, err);
                if (rc == PRIMAL_OK)
                    rc = primal_dist_sum_i32(t->dist, buf, n, err);
                if (rc != PRIMAL_OK)
                    return primal_err_prefix(err, "%s", p->name);
            }
        }
    }
    *loss_out = loss_sum / k;
    int finite = 1;
    double gsq = t->gsq + float_grad_sq(t, &finite);
    if (!finite)
        t->bad_step = 1;
    if (t->bad_step)
        return PRIMAL_OK;
    double clip_scale = 1.0, gnorm = sqrt(gsq);
    t->gnorm = gnorm;
    if (e->optim.clip > 0 && gnorm > e->optim.clip)
        clip_scale = e->optim.clip / gnorm;
    adamw(t, e->optim.lr * mult, clip_scale);
    primal_step_info si = {t->step, k, e->run.seed, mult, clip_scale};
    for (int i = 0; i < t->np; i++) {
        primal_param *p = primal_model_param(t->m, i);
        if (!t->ps[i].has_policy)
            continue;
        primal_step_stats st = {0, 0, 0};
        int rc = t->pvt->step(t->pctx, t->ps[i].policy, &p->q, &si, &st, err);
        if (rc != PRIMAL_OK)
            return primal_err_prefix(err, "%s: step %s", e->policy->desc->name, p->name);
        tot->flips += st.flips;
        tot->saturated += st.saturated;
        tot->weights += st.weights;
    }
    return PRIMAL_OK;
}

/* Memory at a log line.  peak: the run's peak as peak_mem_bytes reports it: on a CUDA run the
 * model's own accounting (its buffers only: not the policy's state, the CUDA context or cuBLAS's
 * workspaces), else the process's peak resident set.  On a CUDA run also the whole device's use
 * now and its largest sample so far (cudaMemGetInfo: every process on the device counts);
 * device is 0 where those are not known. */
typedef struct mem_sample {
    size_t peak, policy_state, device_used, device_peak;
    int device;
} mem_sample;

static mem_sample mem_now(trainer *t)
{
    mem_sample ms = {.peak = peak_rss(), .policy_state = policy_state_bytes(t)};
#ifdef PRIMAL_HAVE_CUDA
    primal_cuda_mem cmem;
    primal_err e2;
    if (CUDA_RUN(t) && primal_cuda_model_memory(t->cm, &cmem, &e2) == PRIMAL_OK) {
        ms.peak = cmem.peak;
        ms.device_used = cmem.device_used;
        ms.device_peak = cmem.device_peak;
        ms.device = 1;
    }
#endif
    return ms;
}

/* j, a log line, with the device figures of ms added where known (a CUDA run). */
static json_t *with_device(json_t *j, const mem_sample *ms)
{
    if (j != NULL && ms->device) {
        json_object_set_new(j, "device_used_bytes", json_integer((json_int_t)ms->device_used));
        json_object_set_new(j, "device_peak_bytes", json_integer((json_int_t)ms->device_peak));
    }
    return j;
}

static int sample(trainer *t, primal_err *err)
{
    const primal_experiment *e = t->e;
    if (e->run.sample_tokens <= 0)
        return PRIMAL_OK;
#ifdef PRIMAL_HAVE_CUDA
    if (CUDA_RUN(t)) { /* sampling runs on the host mirror */
        int rc = primal_cuda_model_download(t->cm, t->m, err);
        if (rc != PRIMAL_OK)
            return rc;
    }
#endif
    char *text = NULL;
    primal_gen_opts go = {.n_tokens = e->run.sample_tokens, .temperature = 0.8f, .top_k = 40,
                          .seed = e->run.seed, .max_ctx = e->run.seq_len};
    int rc = primal_generate(t->m, t->tok_gen, e->run.sample_prompt, &go, &text, err);
    if (rc == PRIMAL_OK && t->rank == 0) { /* also in the run directory, with a final newline */
        size_t n = strlen(text);
        char *file = malloc(n + 2);
        char path[4200];
        snprintf(path, sizeof path, "%s/sample.txt", t->dir);
        if (file == NULL) {
            rc = primal_errf(err, PRIMAL_ENOMEM, "out of memory");
        } else {
            memcpy(file, text, n);
            if (n == 0 || text[n - 1] != '\n')
                file[n++] = '\n';
            file[n] = '\0';
            rc = write_file_atomic(path, file, err);
            free(file);
        }
    }
    if (rc == PRIMAL_OK)
        emit(t, (primal_event){.kind = PRIMAL_EV_SAMPLE, .step = t->step, .message = text});
    free(text);
    return rc;
}

int primal_train(primal_experiment *e, const primal_train_opts *o, primal_err *err)
{
    trainer t = {.e = e, .o = o, .log_fd = -1, .t_start = now_s()};
    t.rank = primal_dist_rank(o->dist);
    t.keep_ckpts = primal_cfg_int(e->run_c, "keep_checkpoints");
    primal_run_dir(e, t.dir, sizeof t.dir);
    /* nothing is written until set-up and --resume's restore have succeeded */
    int rc = t.rank == 0 ? check_dir(t.dir, e, o, err) : PRIMAL_OK;
    if (rc == PRIMAL_OK)
        rc = setup(&t, err);
    if (rc == PRIMAL_OK && o->resume) {
        int found = 0;
        rc = resume(&t, &found, err);
        if (rc == PRIMAL_OK && !found)
            warn(&t, "--resume: no checkpoint in the run directory; starting afresh");
    }
    if (rc == PRIMAL_OK)
        rc = check_weights(&t, err);
    if (rc == PRIMAL_OK && t.rank == 0)
        rc = take_dir(&t, err);
    /* the schedule of the step before the first one to run: after --resume that is the one
     * the checkpoint was written under, so the first step reports only real changes; on a
     * fresh run it is step 0's, to report state bytes for what trains at the start */
    if (rc == PRIMAL_OK)
        rc = run_schedulers(&t, t.step > 0 ? t.step - 1 : 0, err);
    if (rc == PRIMAL_OK && t.step == 0)
        rc = apply_trainable(&t, err);
    if (rc == PRIMAL_OK) {
        double idx_b = 0, flt_b = 0, st_b = state_bytes_per_weight(&t, &idx_b, &flt_b);
        primal_model_mem mm;
        primal_model_memory(t.m, &mm);
        int64_t nw = 0;
        for (int i = 0; i < t.np; i++) {
            primal_param *p = primal_model_param(t.m, i);
            nw += p->is_matrix ? p->q.rows * p->q.cols : p->n;
        }
        char msg[1024];
        snprintf(msg, sizeof msg,
                 "%s: %lld parameters, policy %s, grid %s; training state %.3g B/weight "
                 "(+ %.3g B/weight of index, %.3g B/weight of float parameters and their AdamW "
                 "moments), weights in memory %.1f MB",
                 t.dir, (long long)nw, e->policy->desc->name, e->grid->name, st_b, idx_b,
                 flt_b, (double)mm.weights / 1e6);
        /* the bytes per matrix weight the run holds: policy state, index, float parameters
         * (state_bytes_per_weight); policy_state_bytes: the policy's state in all */
        json_t *j = json_pack("{s:s,s:I,s:s,s:s,s:f,s:f,s:f,s:I,s:I}", "event", "start",
                              "params", (json_int_t)nw, "policy", e->policy->desc->name, "grid",
                              e->grid->name, "state_bytes_per_weight", st_b,
                              "index_bytes_per_weight", idx_b, "float_bytes_per_weight", flt_b,
                              "policy_state_bytes", (json_int_t)policy_state_bytes(&t), "step",
                              (json_int_t)t.step);
        rc = log_json(&t, j, err);
        if (rc == PRIMAL_OK)
            emit(&t, (primal_event){.kind = PRIMAL_EV_START, .step = t.step,
                                    .total_steps = e->run.steps, .message = msg});
    }
    if (rc != PRIMAL_OK) { /* failed at start: leave no run directory this run created */
        trainer_free(&t);
        unmake_dir(&t);
        return rc;
    }
    double t0 = now_s(), window_t = t0;
    int64_t window_tokens = t.tokens, consecutive_bad = 0, start_step = t.step;
    double loss_window = 0, gnorm_window = 0;
    int nloss = 0;
    primal_step_stats win = {0, 0, 0};
    while (rc == PRIMAL_OK && t.step < e->run.steps) {
        int old_seq = t.view.seq_len, old_accum = t.view.grad_accum;
        rc = run_schedulers(&t, t.step, err);
        if (rc != PRIMAL_OK)
            break;
        rc = report_schedule(&t, t.step > 0 && old_seq != t.view.seq_len,
                             t.step > 0 && old_accum != t.view.grad_accum, old_seq, old_accum,
                             err);
        if (rc == PRIMAL_OK)
            rc = apply_trainable(&t, err);
        if (rc != PRIMAL_OK)
            break;
        double loss = 0;
        primal_step_stats st = {0, 0, 0};
        rc = one_step(&t, &loss, &st, err);
        if (rc != PRIMAL_OK)
            break;
        if (t.bad_step) {
            t.nan_skips++;
            consecutive_bad++;
            char msg[256];
            snprintf(msg, sizeof msg, "step %lld: loss or gradient not finite; step skipped",
                     (long long)t.step);
            warn(&t, msg);
            if (consecutive_bad >= 10) {
                rc = primal_errf(err, PRIMAL_ERROR,
                                 "loss or gradients not finite for 10 steps in a row (at step "
                                 "%lld): lower [optim] lr or the policy's lr",
                                 (long long)t.step);
                break;
            }
        } else {
            consecutive_bad = 0;
            loss_window += loss;
            gnorm_window += t.gnorm;
            nloss++;
            win.flips += st.flips;
            win.saturated += st.saturated;
            win.weights += st.weights;
        }
        t.step++;
        int last = t.step == e->run.steps;
        int stopping = o->stop_flag != NULL && *o->stop_flag;
        if (t.nranks > 1 && (rc = primal_dist_max_int(t.dist, &stopping, err)) != PRIMAL_OK)
            break; /* a signal to any rank stops them all after the same step */
        if (!t.gemm_logged) {
            t.gemm_logged = 1;
            if ((rc = log_gemm_plans(&t, err)) != PRIMAL_OK)
                break;
        }
        if (t.step % e->run.log_every == 0 || last || stopping) {
            double now = now_s();
            double tps = (double)(t.tokens - window_tokens) / (now - window_t + 1e-9);
            int64_t ntrain = 0;
            for (int i = 0; i < t.np; i++)
                ntrain += t.trainable[i];
            double steps_per_s = (double)(t.step - start_step) / (now - t0 + 1e-9);
            mem_sample ms = mem_now(&t);
            primal_event ev = {
                .kind = PRIMAL_EV_STEP,
                .step = t.step,
                .total_steps = e->run.steps,
                .loss = nloss ? loss_window / nloss : NAN,
                .lr = e->optim.lr * lr_factor(e, t.step - 1) * t.view.lr_mult,
                .tokens_per_s = tps,
                .flips = win.flips,
                .flip_frac = win.weights ? (double)win.flips / (double)win.weights : 0,
                .saturated = win.saturated,
                .trainable = ntrain,
                .peak_mem_bytes = ms.peak,
                .policy_state_bytes = ms.policy_state,
                .device_used_bytes = ms.device_used,
                .device_peak_bytes = ms.device_peak,
                .eta_s = steps_per_s > 0 ? (double)(e->run.steps - t.step) / steps_per_s : 0,
            };
            /* grad_norm: the mean, over the line's steps, of the norm before clipping (-1, as
             * loss, when none of them was finite); time_s: since the run began, resumes
             * included; peak_mem_bytes: the model's own buffers on a CUDA run (the process's
             * peak resident set on the CPU), policy_state_bytes beside it, and on a CUDA run
             * the whole device's use (device_used_bytes, device_peak_bytes) */
            double gn = nloss ? gnorm_window / nloss : -1.0;
            json_t *j = with_device(
                json_pack("{s:I,s:f,s:f,s:f,s:f,s:I,s:f,s:I,s:f,s:I,s:I,s:I,s:I,s:f}", "step",
                          (json_int_t)ev.step, "loss", isfinite(ev.loss) ? ev.loss : -1.0,
                          "grad_norm", isfinite(gn) ? gn : -1.0, "lr", ev.lr, "tokens_per_s",
                          tps, "flips", (json_int_t)ev.flips, "flip_frac", ev.flip_frac,
                          "saturated", (json_int_t)ev.saturated, "saturated_frac",
                          win.weights ? (double)win.saturated / (double)win.weights : 0.0,
                          "trainable", (json_int_t)ntrain, "peak_mem_bytes",
                          (json_int_t)ev.peak_mem_bytes, "policy_state_bytes",
                          (json_int_t)ev.policy_state_bytes, "nan_skips",
                          (json_int_t)t.nan_skips, "time_s", t.time_off + (now - t.t_start)),
                &ms);
            if ((rc = log_json(&t, j, err)) != PRIMAL_OK)
                break;
            emit(&t, ev);
            window_t = now;
            window_tokens = t.tokens;
            loss_window = 0;
            gnorm_window = 0;
            nloss = 0;
            win = (primal_step_stats){0, 0, 0};
        }
        if (t.have_val && ((e->run.eval_every > 0 && t.step % e->run.eval_every == 0) || last)) {
            double vl = NAN;
            rc = evaluate(&t, &vl, err);
            if (rc != PRIMAL_OK)
                break;
            mem_sample ms = mem_now(&t); /* evaluation may have grown the device's buffers */
            json_t *j = with_device(
                json_pack("{s:I,s:f}", "step", (json_int_t)t.step, "val_loss", vl), &ms);
            if ((rc = log_json(&t, j, err)) != PRIMAL_OK)
                break;
            emit(&t, (primal_event){.kind = PRIMAL_EV_EVAL, .step = t.step,
                                    .total_steps = e->run.steps, .val_loss = vl});
        }
        if ((e->run.ckpt_every > 0 && t.step % e->run.ckpt_every == 0) || last || stopping) {
            rc = save_ckpt(&t, err);
            if (rc != PRIMAL_OK)
                break;
        }
        if (stopping && !last) {
            rc = PRIMAL_EINTR;
            primal_errf(err, PRIMAL_EINTR, "stopped at step %lld; continue with --resume",
                        (long long)t.step);
        }
    }
    if (rc == PRIMAL_OK && t.step == e->run.steps && e->run.steps == start_step)
        rc = save_ckpt(&t, err); /* zero steps asked: still leave a checkpoint */
    if (rc == PRIMAL_OK)
        rc = sample(&t, err);
    if (rc == PRIMAL_OK && t.log_fd >= 0 && close(t.log_fd) != 0)
        rc = primal_errf(err, PRIMAL_EIO, "%s: cannot write: %s", t.log_path, strerror(errno));
    t.log_fd = -1;
    if (rc == PRIMAL_OK) {
        mem_sample ms = mem_now(&t);
        emit(&t, (primal_event){.kind = PRIMAL_EV_DONE, .step = t.step,
                                .peak_mem_bytes = ms.peak,
                                .policy_state_bytes = ms.policy_state,
                                .device_used_bytes = ms.device_used,
                                .device_peak_bytes = ms.device_peak});
    }
    trainer_free(&t);
    /* failed in its first step: as at start, leave no run directory behind */
    if (rc != PRIMAL_OK && rc != PRIMAL_EINTR && t.step == start_step)
        unmake_dir(&t);
    return rc;
}

int primal_dump_batches(primal_experiment *e, int n, const char *path, primal_err *err)
{
    primal_tokenizer *tok = NULL;
    int rc = primal_tokenizer_open(e->tokenizer, &tok, err);
    if (rc != PRIMAL_OK)
        return primal_err_prefix(err, "[data] tokenizer");
    int B = e->run.batch, T = e->run.seq_len;
    int64_t *dummy = NULL;
    (void)dummy;
    int32_t *tokens = malloc((size_t)n * B * (T + 1) * sizeof *tokens);
    uint8_t *mask = malloc((size_t)n * B * T);
    primal_dataq *q = NULL;
    if (tokens == NULL || mask == NULL)
        rc = primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    primal_loader_info li = {tok, PRIMAL_SPLIT_TRAIN, e->run.seed, 0, 1};
    if (rc == PRIMAL_OK)
        rc = primal_dataq_open(e->loader, e->loader_c, &li, B, T, 2, &q, err);
    for (int i = 0; i < n && rc == PRIMAL_OK; i++) {
        const primal_batch *b = NULL;
        rc = primal_dataq_next(q, T, &b, err);
        if (rc == PRIMAL_OK) {
            memcpy(tokens + (size_t)i * B * (T + 1), b->tokens,
                   (size_t)B * (T + 1) * sizeof *tokens);
            memcpy(mask + (size_t)i * B * T, b->mask, (size_t)B * T);
        }
    }
    primal_dataq_close(q);
    primal_stw *w = NULL;
    if (rc == PRIMAL_OK)
        rc = primal_stw_begin(path, &w, err);
    int64_t ts[3] = {n, B, T + 1}, ms[3] = {n, B, T};
    if (rc == PRIMAL_OK)
        rc = primal_stw_add(w, "tokens", PRIMAL_I32, 3, ts, tokens, err);
    if (rc == PRIMAL_OK)
        rc = primal_stw_add(w, "mask", PRIMAL_U8, 3, ms, mask, err);
    if (rc == PRIMAL_OK)
        rc = primal_stw_commit(w, err);
    else if (w != NULL)
        primal_stw_abort(w);
    free(tokens);
    free(mask);
    primal_tokenizer_close(tok);
    return rc;
}
