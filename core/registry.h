/* registry.h (private to libprimal): finding and loading plugins.
 *
 * A plugin named in the experiment file is looked up as NAME.so along the search path:
 * --plugin-path directories, then $PRIMAL_PLUGIN_PATH (colon-separated), then $(pkglibdir).  The
 * build tree's plugin directories (PRIMAL_BUILD_PLUGIN_DIRS) come before $(pkglibdir) only when
 * the libprimal running is the build tree's own uninstalled copy (so `make check` and
 * ./primal-run work); an installed libprimal never searches them, so a build tree deleted and
 * recreated by someone else later runs nobody's code.
 *
 * A value with a '/' is the path of a .so (the suffix is required): a relative one resolves
 * against the directory primal_search_relative_to set (the experiment file's, for values read
 * from it), else against the current directory.  A missing file is refused before dlopen.
 *
 * Loading checks, in order: dlopen works, the descriptor symbol exists, the ABI major
 * version matches and the minor is not newer, `size` covers the descriptor, the kind is the one
 * the section needs, the name is the one asked for, the key table is well-formed (types,
 * ranges, defaults that pass their own range), and the vtable has its required members. */
#ifndef PRIMAL_REGISTRY_H
#define PRIMAL_REGISTRY_H

#include <primal/plugin.h>

typedef struct primal_search {
    char **dirs;
    int n;
    char *base; /* relative plugin paths resolve against it; NULL: the current directory */
} primal_search;

typedef struct primal_loaded {
    const primal_plugin *desc;
    void *dl;
    char *path;
    /* what a resolved configuration (config.ini) names it by: the plugin's name when it was
     * found by name along the search path, else the absolute path of the file loaded, so that
     * the configuration loads the same file again from any directory */
    char *ref;
} primal_loaded;

/* extra: --plugin-path directories (NULL-terminated, may be NULL). */
int primal_search_init(primal_search *s, const char *const *extra, primal_err *err);
void primal_search_free(primal_search *s);
/* Resolve relative plugin paths from now on against the directory of file (an experiment file),
 * or against the current directory when file is NULL (values given on the command line). */
int primal_search_relative_to(primal_search *s, const char *file, primal_err *err);
/* Whether this libprimal is the build tree's uninstalled copy, whose search path includes the
 * build tree's plugin directories. */
int primal_search_in_build_tree(void);

const char *primal_kind_name(primal_kind k); /* "grid", "flip policy", ... */

/* Load name_or_path as a plugin of kind want: a name (letters, digits, '_', '-') along the search
 * path, or a path (with a '/') of a .so file.  On failure the message names the file (or, if not
 * found, the directories searched). */
int primal_plugin_load(const primal_search *s, const char *name_or_path, primal_kind want,
                       primal_loaded **out, primal_err *err);
void primal_plugin_unload(primal_loaded *p);

/* Check a descriptor as the loader does (exposed for tests of in-process descriptors). */
int primal_plugin_check(const primal_plugin *d, const char *path, primal_kind want,
                        const char *want_name, primal_err *err);

/* Call fn for every .so along the search path (first occurrence of a name wins).  ok is 0 and
 * err_msg set for files that fail to load. */
typedef void (*primal_list_fn)(void *user, const char *path, const primal_plugin *d,
                               const char *err_msg);
void primal_plugin_list(const primal_search *s, primal_list_fn fn, void *user);

#endif
