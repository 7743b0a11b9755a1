/* grid.c: building and checking grids (grid.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grid.h"

int primal_grid_validate(const float *v, size_t n, const char *who, primal_err *err)
{
    if (n < 2 || n > PRIMAL_GRID_MAX)
        return primal_errf(err, PRIMAL_ECONFIG, "grid %s: %zu values, must be 2 to %d", who, n,
                           PRIMAL_GRID_MAX);
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(v[i]) || v[i] < -1.0f || v[i] > 1.0f)
            return primal_errf(err, PRIMAL_ECONFIG,
                               "grid %s: value %zu is %.9g, must be finite and within [-1, 1]",
                               who, i, (double)v[i]);
        if (i > 0 && !(v[i] > v[i - 1]))
            return primal_errf(err, PRIMAL_ECONFIG,
                               "grid %s: values %zu and %zu (%.9g, %.9g) are not ascending and "
                               "distinct",
                               who, i - 1, i, (double)v[i - 1], (double)v[i]);
    }
    return PRIMAL_OK;
}

void primal_grid_free(primal_grid *g)
{
    if (g == NULL)
        return;
    free(g->values);
    free(g->keys_ini);
    free(g->plugin_ref);
    free(g);
}

static int generate(const primal_loaded *pl, const primal_config *cfg, primal_grid **out,
                    primal_err *err)
{
    const primal_grid_vt *vt = pl->desc->vtable;
    primal_grid *g = calloc(1, sizeof *g);
    float *buf = malloc(PRIMAL_GRID_MAX * sizeof *buf);
    if (g == NULL || buf == NULL) {
        free(g);
        free(buf);
        return primal_errf(err, PRIMAL_ENOMEM, "grid %s: out of memory", pl->desc->name);
    }
    size_t n = 0;
    int rc = vt->generate(cfg, buf, &n, err);
    if (rc == PRIMAL_OK)
        rc = primal_grid_validate(buf, n, pl->desc->name, err);
    if (rc != PRIMAL_OK) {
        free(g);
        free(buf);
        return rc;
    }
    /* The name records the keys too, so that two differently configured grids of one plugin
     * are told apart in checkpoints. */
    size_t used = (size_t)snprintf(g->name, sizeof g->name, "%s", pl->desc->name);
    const primal_key *keys = primal_config_keys(cfg);
    for (int i = 0; keys && keys[i].name && used < sizeof g->name; i++) {
        const char *val = NULL;
        char tmp[64];
        if (keys[i].type == PRIMAL_KEY_INT) {
            snprintf(tmp, sizeof tmp, "%lld", (long long)primal_cfg_int(cfg, keys[i].name));
            val = tmp;
        } else if (keys[i].type == PRIMAL_KEY_FLOAT) {
            snprintf(tmp, sizeof tmp, "%.9g", primal_cfg_float(cfg, keys[i].name));
            val = tmp;
        } else if (keys[i].type == PRIMAL_KEY_BOOL) {
            val = primal_cfg_bool(cfg, keys[i].name) ? "true" : "false";
        } else {
            val = primal_cfg_str(cfg, keys[i].name);
        }
        used += (size_t)snprintf(g->name + used, sizeof g->name - used, "%s%s=%s",
                                 i ? "," : "(", keys[i].name, val ? val : "");
        if (keys[i + 1].name == NULL && used < sizeof g->name)
            used += (size_t)snprintf(g->name + used, sizeof g->name - used, ")");
    }
    snprintf(g->plugin, sizeof g->plugin, "%s", pl->desc->name);
    g->plugin_ref = strdup(pl->ref != NULL ? pl->ref : pl->desc->name);
    size_t klen = 0;
    FILE *kf = open_memstream(&g->keys_ini, &klen);
    if (kf != NULL) {
        primal_config_write(cfg, kf);
        fclose(kf);
    }
    float *shrunk = realloc(buf, n * sizeof *buf);
    g->values = shrunk != NULL ? shrunk : buf;
    g->size = (int)n;
    *out = g;
    return PRIMAL_OK;
}

/* [grid]'s (and [grid.TENSOR]'s) key of the core: the plugin, and the default grid. */
const primal_key primal_grid_core_keys[] = {
    {"plugin", PRIMAL_KEY_STRING, "prime13",
     "grid plugin: a name, or the path of a .so (relative: as [run] out)", NULL},
    {0},
};

int primal_grid_from_ini(const primal_search *s, primal_ini *ini, const char *section,
                         primal_grid **out, primal_err *err)
{
    *out = NULL;
    int line = 0;
    const char *name = primal_ini_get(ini, section, "plugin", &line);
    if (name == NULL)
        name = primal_grid_core_keys[0].def;
    primal_loaded *pl = NULL;
    int rc = primal_plugin_load(s, name, PRIMAL_KIND_GRID, &pl, err);
    if (rc != PRIMAL_OK) {
        if (line > 0)
            return primal_err_prefix(err, "%s:%d: [%s] plugin", primal_ini_path(ini), line,
                                     section);
        return primal_err_prefix(err, "[%s] plugin", section);
    }
    static const char *const ignore[] = {"plugin", NULL};
    primal_config *cfg = NULL;
    rc = primal_config_bind(ini, section, pl->desc->keys, pl->desc->name, ignore, &cfg, err);
    if (rc == PRIMAL_OK)
        rc = generate(pl, cfg, out, err);
    primal_config_free(cfg);
    primal_plugin_unload(pl);
    return rc;
}

int primal_grid_from_name(const primal_search *s, const char *name, const char *const *kv,
                          primal_grid **out, primal_err *err)
{
    *out = NULL;
    primal_loaded *pl = NULL;
    int rc = primal_plugin_load(s, name, PRIMAL_KIND_GRID, &pl, err);
    if (rc != PRIMAL_OK)
        return rc;
    primal_config *cfg = NULL;
    rc = primal_config_from_kv(pl->desc, "grid", kv, &cfg, err);
    if (rc == PRIMAL_OK)
        rc = generate(pl, cfg, out, err);
    primal_config_free(cfg);
    primal_plugin_unload(pl);
    return rc;
}
