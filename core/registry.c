/* registry.c: finding and loading plugins (registry.h). */
#include <dirent.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <primal/policy_cuda.h>

#include "config.h"
#include "registry.h"

#ifndef PRIMAL_BUILD_PLUGIN_DIRS
#define PRIMAL_BUILD_PLUGIN_DIRS ""
#endif
#ifndef PRIMAL_BUILD_TREE
#define PRIMAL_BUILD_TREE ""
#endif
#ifndef PRIMAL_PKGLIBDIR
#define PRIMAL_PKGLIBDIR "/usr/local/lib/primal"
#endif

const char *primal_kind_name(primal_kind k)
{
    switch (k) {
    case PRIMAL_KIND_GRID: return "grid";
    case PRIMAL_KIND_POLICY: return "flip policy";
    case PRIMAL_KIND_SCHEDULER: return "scheduler";
    case PRIMAL_KIND_LOADER: return "data loader";
    }
    return "unknown kind";
}

static int add_dir(primal_search *s, const char *d, size_t n)
{
    if (n == 0)
        return 0;
    char **nd = realloc(s->dirs, (size_t)(s->n + 1) * sizeof *nd);
    if (nd == NULL)
        return -1;
    s->dirs = nd;
    s->dirs[s->n] = strndup(d, n);
    if (s->dirs[s->n] == NULL)
        return -1;
    s->n++;
    return 0;
}

static int add_list(primal_search *s, const char *list)
{
    while (list && *list) {
        const char *colon = strchr(list, ':');
        size_t n = colon ? (size_t)(colon - list) : strlen(list);
        if (add_dir(s, list, n) != 0)
            return -1;
        list = colon ? colon + 1 : NULL;
    }
    return 0;
}

/* The build tree's plugin directories are searched only by the build tree's own libprimal:
 * core/.libs/libprimal.so (libtool's uninstalled library, which the uninstalled programs and the
 * tests load), or, linked statically, a program built in the build tree.  The file holding this
 * code is found with dladdr and compared, symbolic links resolved, with those directories; an
 * installed libprimal lies elsewhere, and a build tree that no longer exists matches nothing. */
int primal_search_in_build_tree(void)
{
    static const char anchor = 0; /* an object inside libprimal's own file */
    static const char *const dirs[] = {"/core/.libs", "",       "/.libs",      "/tests",
                                       "/tests/.libs", "/bench", "/bench/.libs"};
    if (PRIMAL_BUILD_TREE[0] == '\0')
        return 0;
    Dl_info info;
    const char *file = "/proc/self/exe"; /* the main program's name may be a bare argv[0] */
    if (dladdr(&anchor, &info) != 0 && info.dli_fname != NULL &&
        strchr(info.dli_fname, '/') != NULL)
        file = info.dli_fname;
    char *obj = realpath(file, NULL);
    char *tree = realpath(PRIMAL_BUILD_TREE, NULL);
    int yes = 0;
    if (obj != NULL && tree != NULL && strrchr(obj, '/') != NULL) {
        *strrchr(obj, '/') = '\0'; /* the directory holding it */
        size_t n = strlen(tree);
        if (strncmp(obj, tree, n) == 0)
            for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++)
                yes |= strcmp(obj + n, dirs[i]) == 0;
    }
    free(obj);
    free(tree);
    return yes;
}

int primal_search_init(primal_search *s, const char *const *extra, primal_err *err)
{
    s->dirs = NULL;
    s->n = 0;
    s->base = NULL;
    int bad = 0;
    for (; extra && *extra; extra++)
        bad |= add_dir(s, *extra, strlen(*extra));
    bad |= add_list(s, getenv("PRIMAL_PLUGIN_PATH"));
    if (primal_search_in_build_tree())
        bad |= add_list(s, PRIMAL_BUILD_PLUGIN_DIRS);
    bad |= add_list(s, PRIMAL_PKGLIBDIR);
    if (bad) {
        primal_search_free(s);
        return primal_errf(err, PRIMAL_ENOMEM, "plugin search path: out of memory");
    }
    return PRIMAL_OK;
}

void primal_search_free(primal_search *s)
{
    for (int i = 0; i < s->n; i++)
        free(s->dirs[i]);
    free(s->dirs);
    free(s->base);
    s->dirs = NULL;
    s->n = 0;
    s->base = NULL;
}

int primal_search_relative_to(primal_search *s, const char *file, primal_err *err)
{
    free(s->base);
    s->base = NULL;
    if (file == NULL)
        return PRIMAL_OK;
    const char *slash = strrchr(file, '/');
    s->base = slash == NULL ? strdup(".")
                            : strndup(file, slash == file ? 1 : (size_t)(slash - file));
    if (s->base == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    return PRIMAL_OK;
}

static int check_keys(const primal_plugin *d, const char *path, primal_err *err)
{
    for (const primal_key *k = d->keys; k && k->name; k++) {
        if (k->type < PRIMAL_KEY_INT || k->type > PRIMAL_KEY_ENUM)
            return primal_errf(err, PRIMAL_EABI, "%s: key '%s' has unknown type %d", path,
                               k->name, (int)k->type);
        if (k->type == PRIMAL_KEY_ENUM && k->range == NULL)
            return primal_errf(err, PRIMAL_EABI, "%s: enum key '%s' lists no choices", path,
                               k->name);
        char why[300];
        if (k->def != NULL && primal_key_check(k, k->def, why, sizeof why) != 0)
            return primal_errf(err, PRIMAL_EABI, "%s: key '%s' default: %s", path, k->name,
                               why);
    }
    return PRIMAL_OK;
}

/* Whether a vtable of `size` bytes holds member ending at `end` and that member is set. */
#define HAS(vt, member) \
    ((vt)->size >= offsetof(__typeof__(*(vt)), member) + sizeof((vt)->member) && \
     (vt)->member != NULL)

/* A flip policy's GPU entry points (primal/policy_cuda.h), where it has them: its size must
 * cover every member the core calls unconditionally (train.c: tensor_init at set-up,
 * accumulate and step each micro-batch and step, state_download and state_upload for
 * checkpoints), and those must be set; tensor_free, observe and step_async are optional (the
 * core checks them before each call).  Checked whether or not this PRIMAL was built with CUDA:
 * the descriptor is the plugin's, whichever core loads it. */
static int check_cuda_vtable(const primal_policy_cuda_vt *cvt, const char *path,
                             primal_err *err)
{
    size_t need = offsetof(primal_policy_cuda_vt, state_upload) + sizeof cvt->state_upload;
    if (cvt->size < need)
        return primal_errf(err, PRIMAL_EABI,
                           "%s: flip policy CUDA vtable (.cuda) is %zu bytes, too small for "
                           "its required members (%zu bytes: set .size = "
                           "sizeof(primal_policy_cuda_vt))",
                           path, cvt->size, need);
    const char *missing = NULL;
    if (!HAS(cvt, tensor_init))
        missing = "tensor_init";
    else if (!HAS(cvt, accumulate))
        missing = "accumulate";
    else if (!HAS(cvt, step))
        missing = "step";
    else if (!HAS(cvt, state_download))
        missing = "state_download";
    else if (!HAS(cvt, state_upload))
        missing = "state_upload";
    if (missing != NULL)
        return primal_errf(err, PRIMAL_EABI,
                           "%s: flip policy CUDA vtable (.cuda) lacks the required member %s",
                           path, missing);
    return PRIMAL_OK;
}

static int check_vtable(const primal_plugin *d, const char *path, primal_err *err)
{
    const char *missing = NULL;
    if (d->vtable == NULL)
        return primal_errf(err, PRIMAL_EABI, "%s: descriptor has no vtable", path);
    switch (d->kind) {
    case PRIMAL_KIND_GRID: {
        const primal_grid_vt *vt = d->vtable;
        if (!HAS(vt, generate))
            missing = "generate";
        break;
    }
    case PRIMAL_KIND_POLICY: {
        const primal_policy_vt *vt = d->vtable;
        if (!HAS(vt, create))
            missing = "create";
        else if (!HAS(vt, tensor_init))
            missing = "tensor_init";
        else if (!HAS(vt, state_bytes))
            missing = "state_bytes";
        else if (!HAS(vt, accumulate))
            missing = "accumulate";
        else if (!HAS(vt, step))
            missing = "step";
        else if (!HAS(vt, state_save))
            missing = "state_save";
        else if (!HAS(vt, state_load))
            missing = "state_load";
        else if (HAS(vt, cuda))
            return check_cuda_vtable(vt->cuda, path, err);
        break;
    }
    case PRIMAL_KIND_SCHEDULER: {
        const primal_scheduler_vt *vt = d->vtable;
        if (!HAS(vt, create))
            missing = "create";
        else if (!HAS(vt, apply))
            missing = "apply";
        break;
    }
    case PRIMAL_KIND_LOADER: {
        const primal_loader_vt *vt = d->vtable;
        if (!HAS(vt, open))
            missing = "open";
        else if (!HAS(vt, close))
            missing = "close";
        else if (!HAS(vt, next))
            missing = "next";
        else if (!HAS(vt, save))
            missing = "save";
        else if (!HAS(vt, restore))
            missing = "restore";
        break;
    }
    }
    if (missing != NULL)
        return primal_errf(err, PRIMAL_EABI, "%s: %s vtable lacks the required member %s",
                           path, primal_kind_name(d->kind), missing);
    return PRIMAL_OK;
}

int primal_plugin_check(const primal_plugin *d, const char *path, primal_kind want,
                        const char *want_name, primal_err *err)
{
    if (d == NULL)
        return primal_errf(err, PRIMAL_EABI, "%s: %s() returned NULL", path,
                           PRIMAL_PLUGIN_SYMBOL);
    unsigned major = d->abi_version >> 16, minor = d->abi_version & 0xFFFFu;
    if (major != PRIMAL_ABI_MAJOR || minor > PRIMAL_ABI_MINOR)
        return primal_errf(err, PRIMAL_EABI,
                           "%s: built for plugin ABI %u.%u, this PRIMAL has ABI %d.%d; rebuild "
                           "the plugin against this version's headers",
                           path, major, minor, PRIMAL_ABI_MAJOR, PRIMAL_ABI_MINOR);
    if (d->size < sizeof(primal_plugin))
        return primal_errf(err, PRIMAL_EABI, "%s: descriptor is %u bytes, expected %zu", path,
                           d->size, sizeof(primal_plugin));
    if (d->kind < PRIMAL_KIND_GRID || d->kind > PRIMAL_KIND_LOADER)
        return primal_errf(err, PRIMAL_EABI, "%s: unknown plugin kind %d", path, (int)d->kind);
    if (d->name == NULL || d->name[0] == '\0')
        return primal_errf(err, PRIMAL_EABI, "%s: descriptor has no name", path);
    if (want != 0 && d->kind != want)
        return primal_errf(err, PRIMAL_ECONFIG, "%s: '%s' is a %s plugin, a %s is needed here",
                           path, d->name, primal_kind_name(d->kind), primal_kind_name(want));
    if (want_name != NULL && strcmp(d->name, want_name) != 0)
        return primal_errf(err, PRIMAL_EABI, "%s: the plugin inside is named '%s', not '%s'",
                           path, d->name, want_name);
    int rc = check_keys(d, path, err);
    if (rc == PRIMAL_OK)
        rc = check_vtable(d, path, err);
    return rc;
}

static int open_file(const char *path, primal_kind want, const char *want_name,
                     primal_loaded **out, primal_err *err)
{
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (dl == NULL)
        return primal_errf(err, PRIMAL_EABI, "%s: cannot load: %s", path, dlerror());
    primal_plugin_fn fn;
    void *sym = dlsym(dl, PRIMAL_PLUGIN_SYMBOL);
    if (sym == NULL) {
        dlclose(dl);
        return primal_errf(err, PRIMAL_EABI, "%s: not a PRIMAL plugin (no %s symbol)", path,
                           PRIMAL_PLUGIN_SYMBOL);
    }
    memcpy(&fn, &sym, sizeof fn); /* ISO C forbids casting object to function pointers */
    const primal_plugin *d = fn();
    int rc = primal_plugin_check(d, path, want, want_name, err);
    if (rc != PRIMAL_OK) {
        dlclose(dl);
        return rc;
    }
    primal_loaded *p = calloc(1, sizeof *p);
    if (p == NULL || (p->path = strdup(path)) == NULL || (p->ref = strdup(d->name)) == NULL) {
        if (p != NULL)
            free(p->path);
        free(p);
        dlclose(dl);
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    }
    p->desc = d;
    p->dl = dl;
    *out = p;
    return PRIMAL_OK;
}

/* A path: nothing is opened unless it names an existing regular file NAME.so.  A relative path
 * resolves against s->base (the experiment file's directory), else the current directory. */
static int load_path(const primal_search *s, const char *value, primal_kind want,
                     primal_loaded **out, primal_err *err)
{
    size_t len = strlen(value);
    if (len < 4 || strcmp(value + len - 3, ".so") != 0 || value[len - 4] == '/')
        return primal_errf(err, PRIMAL_ECONFIG, "'%s': a plugin path must name a .so file",
                           value);
    char path[4096];
    const char *rel = value;
    int w;
    if (rel[0] != '/' && s->base != NULL) {
        while (rel[0] == '.' && rel[1] == '/') { /* base/./x.so is base/x.so */
            rel += 2;
            while (*rel == '/')
                rel++;
        }
        w = snprintf(path, sizeof path, "%s/%s", s->base, rel);
    } else {
        w = snprintf(path, sizeof path, "%s", value);
    }
    if (w < 0 || (size_t)w >= sizeof path)
        return primal_errf(err, PRIMAL_ECONFIG, "'%s': path too long", value);
    struct stat st;
    if (stat(path, &st) != 0)
        return primal_errf(err, PRIMAL_ECONFIG, "%s: no such file", path);
    if (!S_ISREG(st.st_mode))
        return primal_errf(err, PRIMAL_ECONFIG, "%s: not a regular file", path);
    int rc = open_file(path, want, NULL, out, err);
    if (rc != PRIMAL_OK)
        return rc;
    /* absolute, as given (symbolic links kept) */
    char cwd[4096], *abs = NULL;
    if (path[0] == '/') {
        abs = strdup(path);
    } else if (getcwd(cwd, sizeof cwd) != NULL) {
        size_t n = strlen(cwd) + strlen(path) + 2;
        if ((abs = malloc(n)) != NULL)
            snprintf(abs, n, "%s/%s", cwd, path);
    }
    if (abs == NULL) {
        primal_plugin_unload(*out);
        *out = NULL;
        return primal_errf(err, PRIMAL_ECONFIG, "%s: cannot make the path absolute", path);
    }
    free((*out)->ref);
    (*out)->ref = abs;
    return PRIMAL_OK;
}

int primal_plugin_load(const primal_search *s, const char *name_or_path, primal_kind want,
                       primal_loaded **out, primal_err *err)
{
    *out = NULL;
    if (strchr(name_or_path, '/') != NULL)
        return load_path(s, name_or_path, want, out, err);
    for (const char *c = name_or_path; *c; c++)
        if (!(*c == '_' || *c == '-' || (*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'z') ||
              (*c >= 'A' && *c <= 'Z')))
            return primal_errf(err, PRIMAL_ECONFIG, "'%s': not a plugin name", name_or_path);
    char path[4096];
    for (int i = 0; i < s->n; i++) {
        snprintf(path, sizeof path, "%s/%s.so", s->dirs[i], name_or_path);
        struct stat st;
        if (stat(path, &st) == 0)
            return open_file(path, want, name_or_path, out, err);
    }
    char dirs[2048];
    size_t used = 0;
    dirs[0] = '\0';
    for (int i = 0; i < s->n && used < sizeof dirs; i++) {
        int w = snprintf(dirs + used, sizeof dirs - used, "%s%s", i ? ":" : "", s->dirs[i]);
        if (w > 0)
            used += (size_t)w;
    }
    return primal_errf(err, PRIMAL_ECONFIG,
                       "no %s plugin named '%s' (searched %s; see primal-run --list-plugins)",
                       primal_kind_name(want), name_or_path, dirs);
}

void primal_plugin_unload(primal_loaded *p)
{
    if (p == NULL)
        return;
    /* Keep the object mapped under AddressSanitizer?  No: dlclose is correct, and LSan reports
     * leaks with unknown frames only if a plugin leaks, which is itself worth seeing. */
    dlclose(p->dl);
    free(p->path);
    free(p->ref);
    free(p);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void primal_plugin_list(const primal_search *s, primal_list_fn fn, void *user)
{
    char **seen = NULL;
    int nseen = 0;
    for (int i = 0; i < s->n; i++) {
        DIR *d = opendir(s->dirs[i]);
        if (d == NULL)
            continue;
        char **names = NULL;
        int nn = 0;
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            size_t len = strlen(e->d_name);
            if (len < 4 || strcmp(e->d_name + len - 3, ".so") != 0)
                continue;
            char **nn2 = realloc(names, (size_t)(nn + 1) * sizeof *names);
            if (nn2 == NULL)
                break;
            names = nn2;
            names[nn] = strdup(e->d_name);
            if (names[nn] != NULL)
                nn++;
        }
        closedir(d);
        qsort(names, (size_t)nn, sizeof *names, cmp_str);
        for (int j = 0; j < nn; j++) {
            int dup = 0;
            for (int k = 0; k < nseen; k++)
                dup |= strcmp(seen[k], names[j]) == 0;
            if (dup) {
                free(names[j]);
                continue;
            }
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", s->dirs[i], names[j]);
            primal_loaded *p = NULL;
            primal_err err;
            primal_err_clear(&err);
            if (open_file(path, 0, NULL, &p, &err) == PRIMAL_OK) {
                fn(user, path, p->desc, NULL);
                primal_plugin_unload(p);
            } else {
                fn(user, path, NULL, err.msg);
            }
            char **ns = realloc(seen, (size_t)(nseen + 1) * sizeof *seen);
            if (ns == NULL) {
                free(names[j]);
                continue;
            }
            seen = ns;
            seen[nseen++] = names[j];
        }
        free(names);
    }
    for (int k = 0; k < nseen; k++)
        free(seen[k]);
    free(seen);
}
