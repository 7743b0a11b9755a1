/* fuzz_common.c: the harnesses' shared helpers (fuzz.h). */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz.h"

static char scratch[512];

/* Remove the scratch directory and what the harnesses left in it (no subdirectories are made
 * below it, except by a run's own files, which are all plain files). */
static void remove_scratch(void)
{
    DIR *d = opendir(scratch);
    if (d == NULL)
        return;
    struct dirent *e;
    char p[1024];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof p, "%s/%s", scratch, e->d_name);
        if (unlink(p) != 0)
            rmdir(p);
    }
    closedir(d);
    rmdir(scratch);
}

const char *fuzz_dir(void)
{
    if (scratch[0] != '\0')
        return scratch;
    const char *tmp = getenv("TMPDIR");
    snprintf(scratch, sizeof scratch, "%s/primal-fuzz.XXXXXX",
             tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp");
    if (mkdtemp(scratch) == NULL)
        fuzz_fail("fuzz: cannot create %s: %s", scratch, strerror(errno));
    atexit(remove_scratch);
    return scratch;
}

const char *fuzz_path(const char *name, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/%s", fuzz_dir(), name);
    return buf;
}

const char *fuzz_write(const char *name, const void *data, size_t n)
{
    static char path[1024];
    fuzz_path(name, path, sizeof path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        fuzz_fail("fuzz: cannot create %s: %s", path, strerror(errno));
    const char *p = data;
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            fuzz_fail("fuzz: write %s: %s", path, strerror(errno));
        p += k;
        n -= (size_t)k;
    }
    close(fd);
    return path;
}

void fuzz_pin_plugins(void)
{
    DIR *d = opendir(FUZZ_PLUGIN_DIR);
    if (d == NULL)
        fuzz_fail("fuzz: no plugin directory %s", FUZZ_PLUGIN_DIR);
    struct dirent *e;
    char p[1024];
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        if (n < 4 || strcmp(e->d_name + n - 3, ".so") != 0)
            continue;
        snprintf(p, sizeof p, "%s/%s", FUZZ_PLUGIN_DIR, e->d_name);
        if (dlopen(p, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE) == NULL)
            fuzz_fail("fuzz: %s: %s", p, dlerror());
    }
    closedir(d);
}

void fuzz_check_err(int rc, const primal_err *err, const char *what)
{
    if (rc == 0)
        return;
    if (rc < -8 || rc > 0)
        fuzz_fail("%s: returned %d, not an error code (message: %s)", what, rc, err->msg);
    if (err->msg[0] == '\0')
        fuzz_fail("%s: returned %d with an empty message", what, rc);
    if (memchr(err->msg, '\0', sizeof err->msg) == NULL)
        fuzz_fail("%s: message not NUL-terminated", what);
}

void fuzz_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}
