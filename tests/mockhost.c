/* mockhost.c: load a built plugin by name for tests (mockhost.h). */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mockhost.h"

#define MOCKHOST_MAX 64
#define PATH_CAP 4096
#define N_CAND 9

static struct {
    void *dl;
    char path[PATH_CAP];
} opened[MOCKHOST_MAX];
static int n_opened;

static const char *const kind_dirs[] = {"plugins", "grids", "schedulers", "loaders"};

/* Write the candidate paths for name in search order; returns how many. */
static int candidates(const char *name, char (*out)[PATH_CAP])
{
    int n = 0;
    const char *build = getenv("PRIMAL_BUILD_DIR");
    if (build != NULL && build[0] != '\0')
        for (int pass = 0; pass < 2; pass++)
            for (size_t k = 0; k < sizeof kind_dirs / sizeof *kind_dirs; k++)
                snprintf(out[n++], PATH_CAP, "%s/%s/%s%s.so", build, kind_dirs[k],
                         pass == 0 ? ".libs/" : "", name);
    const char *dir = getenv("PRIMAL_TEST_PLUGINDIR");
    if (dir != NULL && dir[0] != '\0')
        snprintf(out[n++], PATH_CAP, "%s/%s.so", dir, name);
    return n;
}

/* dlopen path and fetch its descriptor; 0 or a negative code with err filled. */
static int open_one(const char *path, const primal_plugin **out, primal_err *err)
{
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (dl == NULL)
        return primal_errf(err, PRIMAL_EABI, "mockhost: %s: cannot load: %s", path, dlerror());
    primal_plugin_fn fn;
    *(void **)&fn = dlsym(dl, PRIMAL_PLUGIN_SYMBOL);
    const primal_plugin *d = fn != NULL ? fn() : NULL;
    if (d == NULL) {
        dlclose(dl);
        return primal_errf(err, PRIMAL_EABI, "mockhost: %s: no %s(), or it returned NULL", path,
                           PRIMAL_PLUGIN_SYMBOL);
    }
    opened[n_opened].dl = dl;
    snprintf(opened[n_opened].path, PATH_CAP, "%s", path);
    n_opened++;
    *out = d;
    return PRIMAL_OK;
}

const primal_plugin *mockhost_load(const char *name, const char **path, primal_err *err)
{
    static char cand[N_CAND][PATH_CAP];
    int n = candidates(name, cand);
    if (n == 0) {
        primal_errf(err, PRIMAL_EIO, "mockhost: %s: set PRIMAL_BUILD_DIR or PRIMAL_TEST_PLUGINDIR",
                    name);
        return NULL;
    }
    if (n_opened == MOCKHOST_MAX) {
        primal_errf(err, PRIMAL_ERROR, "mockhost: %s: more than %d plugins open", name,
                    MOCKHOST_MAX);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        if (access(cand[i], F_OK) != 0)
            continue;
        const primal_plugin *d = NULL;
        if (open_one(cand[i], &d, err) != PRIMAL_OK)
            return NULL;
        if (path != NULL)
            *path = opened[n_opened - 1].path;
        return d;
    }
    primal_errf(err, PRIMAL_EIO, "mockhost: %s.so not found (searched from %s to %s)", name,
                cand[0], cand[n - 1]);
    return NULL;
}

void mockhost_unload_all(void)
{
    for (int i = 0; i < n_opened; i++)
        dlclose(opened[i].dl);
    n_opened = 0;
}
