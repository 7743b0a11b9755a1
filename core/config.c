/* config.c: the experiment file (config.h).  Reading is inih's; this file adds line numbers,
 * --set overrides, and the binding of sections to declared keys with type and range checks. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <ini.h>

#include "config.h"

typedef struct ini_entry {
    char *key, *value;
    int line; /* -1: from --set */
    int used;
} ini_entry;

typedef struct ini_section {
    char *name;
    int line; /* line of the [header]; -1 if only --set made it, 0 if only bound */
    int used;
    ini_entry *e;
    int n, cap;
} ini_section;

struct primal_ini {
    char *path;
    ini_section *s;
    int n, cap;
};

typedef struct cfg_val {
    char *text;
    int line;
    int set;
    int64_t i;
    double f;
    int b;
} cfg_val;

struct primal_config {
    char *file;
    char *section;
    char *owner;
    int section_line;
    const primal_key *keys;
    int nkeys;
    cfg_val *v;
    char *dir;
};

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d != NULL)
        memcpy(d, s, n);
    return d;
}

/* ------------------------------------------------------------------------------------------ */
/* Reading                                                                                    */

primal_ini *primal_ini_new(const char *name)
{
    primal_ini *ini = calloc(1, sizeof *ini);
    if (ini == NULL)
        return NULL;
    ini->path = xstrdup(name);
    if (ini->path == NULL) {
        free(ini);
        return NULL;
    }
    return ini;
}

void primal_ini_free(primal_ini *ini)
{
    if (ini == NULL)
        return;
    for (int i = 0; i < ini->n; i++) {
        for (int j = 0; j < ini->s[i].n; j++) {
            free(ini->s[i].e[j].key);
            free(ini->s[i].e[j].value);
        }
        free(ini->s[i].e);
        free(ini->s[i].name);
    }
    free(ini->s);
    free(ini->path);
    free(ini);
}

static ini_section *find_section(const primal_ini *ini, const char *name)
{
    for (int i = 0; i < ini->n; i++)
        if (strcmp(ini->s[i].name, name) == 0)
            return &ini->s[i];
    return NULL;
}

static ini_section *add_section(primal_ini *ini, const char *name, int line)
{
    ini_section *s = find_section(ini, name);
    if (s != NULL)
        return s;
    if (ini->n == ini->cap) {
        int cap = ini->cap ? 2 * ini->cap : 16;
        ini_section *ns = realloc(ini->s, (size_t)cap * sizeof *ns);
        if (ns == NULL)
            return NULL;
        ini->s = ns;
        ini->cap = cap;
    }
    s = &ini->s[ini->n];
    memset(s, 0, sizeof *s);
    s->name = xstrdup(name);
    if (s->name == NULL)
        return NULL;
    s->line = line;
    ini->n++;
    return s;
}

static ini_entry *find_entry(const ini_section *s, const char *key)
{
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->e[i].key, key) == 0)
            return &s->e[i];
    return NULL;
}

static int put_entry(ini_section *s, const char *key, const char *value, int line)
{
    ini_entry *e = find_entry(s, key);
    if (e != NULL) {
        char *v = xstrdup(value);
        if (v == NULL)
            return PRIMAL_ENOMEM;
        free(e->value);
        e->value = v;
        e->line = line;
        return PRIMAL_OK;
    }
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 16;
        ini_entry *ne = realloc(s->e, (size_t)cap * sizeof *ne);
        if (ne == NULL)
            return PRIMAL_ENOMEM;
        s->e = ne;
        s->cap = cap;
    }
    e = &s->e[s->n];
    memset(e, 0, sizeof *e);
    e->key = xstrdup(key);
    e->value = xstrdup(value);
    if (e->key == NULL || e->value == NULL) {
        free(e->key);
        free(e->value);
        return PRIMAL_ENOMEM;
    }
    e->line = line;
    s->n++;
    return PRIMAL_OK;
}

/* inih's limits: a line of at most INI_MAX_LINE - 2 characters (its buffer also holds the
 * newline and the NUL), and section names cut at 49 characters (MAX_SECTION, 50 with the NUL, a
 * constant of ini.c that ini.h does not show). */
_Static_assert(PRIMAL_INI_MAX_LINE == INI_MAX_LINE - 2, "PRIMAL_INI_MAX_LINE is inih's");

/* The value inih takes from the text after a key's '=': cut at an inline comment (a ';' after
 * white space, INI_INLINE_COMMENT_PREFIXES), then without leading and trailing white space.
 * Returns its start; *len gets its length. */
static const char *read_value(const char *raw, size_t *len)
{
    const char *end = raw;
    int was_space = 0;
    while (*end != '\0' && !(was_space && *end == ';')) {
        was_space = isspace((unsigned char)*end);
        end++;
    }
    while (raw < end && isspace((unsigned char)*raw))
        raw++;
    while (end > raw && isspace((unsigned char)end[-1]))
        end--;
    *len = (size_t)(end - raw);
    return raw;
}

const char *primal_ini_value_problem(const char *value)
{
    if (strchr(value, '\n') != NULL)
        return "holds a line break";
    if (value[0] == ';')
        return "starts with ';', which after \" = \" starts a comment";
    if (value[0] != '\0' && isspace((unsigned char)value[0]))
        return "starts with white space, which the reader drops";
    size_t n = strlen(value);
    if (n > 0 && isspace((unsigned char)value[n - 1]))
        return "ends in white space, which the reader drops";
    for (size_t i = 1; i < n; i++)
        if (value[i] == ';' && isspace((unsigned char)value[i - 1]))
            return "holds a ';' after white space, which starts a comment";
    return NULL;
}

const char *primal_ini_section_problem(const char *name)
{
    if (strlen(name) > PRIMAL_INI_MAX_SECTION)
        return "section name longer than 49 characters";
    if (strchr(name, '\n') != NULL)
        return "section name holds a line break";
    if (strchr(name, ']') != NULL)
        return "section name holds ']', which ends it";
    for (size_t i = 1; name[i] != '\0'; i++)
        if (name[i] == ';' && isspace((unsigned char)name[i - 1]))
            return "section name holds a ';' after white space, which starts a comment";
    return NULL;
}

/* A section name for messages: whole, or its first 49 characters and "...". */
static void section_shown(char *buf, size_t n, const char *name)
{
    if (strlen(name) > PRIMAL_INI_MAX_SECTION)
        snprintf(buf, n, "%.*s...", PRIMAL_INI_MAX_SECTION, name);
    else
        snprintf(buf, n, "%s", name);
}

/* inih's Debian build has no line numbers for handlers, so the reader counts lines itself and
 * also notices section headers (inih does not report empty sections), over-long lines (inih
 * would silently split them) and over-long section names (inih would silently cut them, and
 * the file would get two sections: the whole name's, empty, and the cut one's).  The first
 * such problem, by line, is kept in bad_line and bad_msg. */
typedef struct reader_state {
    FILE *f;
    primal_ini *ini;
    int line;
    int bad_line;
    char bad_msg[512];
    int oom;
} reader_state;

static void note_bad(reader_state *rs, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void note_bad(reader_state *rs, int line, const char *fmt, ...)
{
    if (rs->bad_line != 0 && rs->bad_line <= line)
        return;
    rs->bad_line = line;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rs->bad_msg, sizeof rs->bad_msg, fmt, ap);
    va_end(ap);
}

static char *line_reader(char *str, int num, void *stream)
{
    reader_state *rs = stream;
    if (fgets(str, num, rs->f) == NULL)
        return NULL;
    rs->line++;
    size_t len = strlen(str);
    if (len == (size_t)num - 1 && str[len - 1] != '\n' && !feof(rs->f)) {
        note_bad(rs, rs->line, "line too long (at most %d characters)", PRIMAL_INI_MAX_LINE);
        int c;
        while ((c = fgetc(rs->f)) != EOF && c != '\n')
            ;
    }
    const char *p = str;
    if (rs->line == 1 && strncmp(p, "\xEF\xBB\xBF", 3) == 0)
        p += 3; /* a UTF-8 byte order mark, which inih skips (INI_ALLOW_BOM) */
    while (isspace((unsigned char)*p))
        p++;
    if (*p == '[') {
        const char *q = strchr(p, ']');
        if (q != NULL) {
            char name[256];
            size_t n = (size_t)(q - p - 1);
            if (n >= sizeof name)
                n = sizeof name - 1;
            memcpy(name, p + 1, n);
            name[n] = '\0';
            /* inih keeps the name as written between the brackets, spaces included */
            if (n > PRIMAL_INI_MAX_SECTION) {
                char shown[64];
                section_shown(shown, sizeof shown, name);
                note_bad(rs, rs->line, "[%s]: section name longer than %d characters", shown,
                         PRIMAL_INI_MAX_SECTION);
            } else if (add_section(rs->ini, name, rs->line) == NULL) {
                rs->oom = 1;
            }
        }
    }
    return str;
}

static int ini_handler_fn(void *user, const char *section, const char *name, const char *value)
{
    reader_state *rs = user;
    ini_section *s = add_section(rs->ini, section, rs->line);
    if (s == NULL) {
        rs->oom = 1;
        return 0;
    }
    ini_entry *e = find_entry(s, name);
    if (e != NULL) {
        note_bad(rs, rs->line, "%.128s: key given twice (first at line %d)", name, e->line);
        return 1;
    }
    /* "key =;v" reads as ";v" (no white space before the ';'), but the resolved configuration
     * would write it back as "key = ;v", a comment */
    if (value[0] == ';')
        note_bad(rs, rs->line,
                 "[%s] %.128s: a value may not start with ';' (written back as \"%.128s = ;...\" "
                 "in the resolved configuration, it would read as a comment)",
                 section, name, name);
    if (put_entry(s, name, value, rs->line) != PRIMAL_OK) {
        rs->oom = 1;
        return 0;
    }
    return 1;
}

int primal_ini_load(const char *path, primal_ini **out, primal_err *err)
{
    *out = NULL;
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return primal_errf(err, PRIMAL_EIO, "%s: cannot open: %s", path, strerror(errno));
    /* fopen opens a directory for reading, and inih then sees an empty file */
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(f);
        return primal_errf(err, PRIMAL_EIO, "%s: is a directory, not an INI file", path);
    }
    primal_ini *ini = primal_ini_new(path);
    if (ini == NULL) {
        fclose(f);
        return primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", path);
    }
    reader_state rs = {.f = f, .ini = ini};
    int rc = ini_parse_stream(line_reader, &rs, ini_handler_fn, &rs);
    fclose(f);
    if (rs.oom) {
        primal_ini_free(ini);
        return primal_errf(err, PRIMAL_ENOMEM, "%s: out of memory", path);
    }
    /* the first problem by line: inih's (rc, the first line it could not parse) or the
     * reader's */
    if (rs.bad_line && (rc <= 0 || rs.bad_line <= rc)) {
        primal_ini_free(ini);
        return primal_errf(err, PRIMAL_ECONFIG, "%s:%d: %s", path, rs.bad_line, rs.bad_msg);
    }
    if (rc > 0) {
        primal_ini_free(ini);
        return primal_errf(err, PRIMAL_ECONFIG,
                           "%s:%d: syntax error: expected [section] or key = value", path, rc);
    }
    if (rc < 0) {
        primal_ini_free(ini);
        return primal_errf(err, PRIMAL_EIO, "%s: cannot read", path);
    }
    /* keys before any [section] */
    ini_section *top = find_section(ini, "");
    if (top != NULL && top->n > 0) {
        int line = top->e[0].line;
        char key[128];
        snprintf(key, sizeof key, "%s", top->e[0].key);
        primal_ini_free(ini);
        return primal_errf(err, PRIMAL_ECONFIG, "%s:%d: %s: key outside any [section]", path,
                           line, key);
    }
    if (top != NULL)
        top->used = 1;
    *out = ini;
    return PRIMAL_OK;
}

int primal_ini_set(primal_ini *ini, const char *assignment, primal_err *err)
{
    const char *eq = strchr(assignment, '=');
    if (eq == NULL)
        return primal_errf(err, PRIMAL_ECONFIG,
                           "--set %s: expected section.key=value", assignment);
    char lhs[512];
    size_t n = (size_t)(eq - assignment);
    if (n >= sizeof lhs)
        return primal_errf(err, PRIMAL_ECONFIG, "--set %s: name too long", assignment);
    memcpy(lhs, assignment, n);
    lhs[n] = '\0';
    while (n > 0 && isspace((unsigned char)lhs[n - 1]))
        lhs[--n] = '\0';
    char *dot = strrchr(lhs, '.');
    if (dot == NULL || dot == lhs || dot[1] == '\0')
        return primal_errf(err, PRIMAL_ECONFIG, "--set %s: expected section.key=value",
                           assignment);
    *dot = '\0';
    const char *key = dot + 1;
    /* the section must be one a file's [header] gives back as it is, since the resolved
     * configuration (config.ini) writes it so */
    const char *why = primal_ini_section_problem(lhs);
    if (why != NULL) {
        char shown[64];
        section_shown(shown, sizeof shown, lhs);
        return primal_errf(err, PRIMAL_ECONFIG, "--set: [%s]: %s", shown, why);
    }
    /* the value as a file's line "key = value" gives it (read_value), so that --set and the
     * file agree and the resolved configuration reads back the value the run used */
    if (strchr(eq + 1, '\n') != NULL)
        return primal_errf(err, PRIMAL_ECONFIG, "--set: [%s] %s: a value may not hold a line "
                           "break", lhs, key);
    size_t vlen;
    const char *v = read_value(eq + 1, &vlen);
    if (vlen > 0 && v[0] == ';')
        return primal_errf(err, PRIMAL_ECONFIG,
                           "--set: [%s] %s: a value may not start with ';' (written back as "
                           "\"%s = ;...\" in the resolved configuration, it would read as a "
                           "comment)",
                           lhs, key, key);
    char *value = malloc(vlen + 1);
    if (value == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "--set: out of memory");
    memcpy(value, v, vlen);
    value[vlen] = '\0';
    ini_section *s = add_section(ini, lhs, -1);
    int rc = s == NULL ? PRIMAL_ENOMEM : put_entry(s, key, value, -1);
    free(value);
    if (rc != PRIMAL_OK)
        return primal_errf(err, PRIMAL_ENOMEM, "--set: out of memory");
    return PRIMAL_OK;
}

const char *primal_ini_path(const primal_ini *ini) { return ini->path; }
int primal_ini_nsections(const primal_ini *ini) { return ini->n; }
const char *primal_ini_section_name(const primal_ini *ini, int i) { return ini->s[i].name; }

int primal_ini_has_section(const primal_ini *ini, const char *section)
{
    return find_section(ini, section) != NULL;
}

const char *primal_ini_get(const primal_ini *ini, const char *section, const char *key,
                           int *line)
{
    ini_section *s = find_section(ini, section);
    ini_entry *e = s ? find_entry(s, key) : NULL;
    if (e == NULL)
        return NULL;
    if (line != NULL)
        *line = e->line;
    return e->value;
}

void primal_ini_claim(primal_ini *ini, const char *section)
{
    ini_section *s = find_section(ini, section);
    if (s != NULL)
        s->used = 1;
}

static void where(char *buf, size_t n, const char *file, int line)
{
    if (line > 0)
        snprintf(buf, n, "%s:%d", file, line);
    else if (line < 0)
        snprintf(buf, n, "--set");
    else
        snprintf(buf, n, "%s", file);
}

int primal_ini_check_unused(const primal_ini *ini, const char *known_hint, primal_err *err)
{
    for (int i = 0; i < ini->n; i++) {
        const ini_section *s = &ini->s[i];
        if (!s->used) {
            char w[600];
            where(w, sizeof w, ini->path, s->line);
            return primal_errf(err, PRIMAL_ECONFIG, "%s: [%s]: unknown section (%s)", w,
                               s->name, known_hint);
        }
    }
    return PRIMAL_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Values                                                                                     */

static int parse_int(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end != '\0' || errno == ERANGE)
        return -1;
    *out = v;
    return 0;
}

static int parse_float(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || errno == ERANGE || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

static int parse_bool(const char *s, int *out)
{
    static const char *yes[] = {"true", "yes", "on", "1"}, *no[] = {"false", "no", "off", "0"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    return -1;
}

static double parse_bound(const char *s, size_t n)
{
    char buf[64];
    if (n >= sizeof buf)
        n = sizeof buf - 1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    char *p = buf;
    while (isspace((unsigned char)*p))
        p++;
    if (strcmp(p, "inf") == 0 || strcmp(p, "+inf") == 0)
        return INFINITY;
    if (strcmp(p, "-inf") == 0)
        return -INFINITY;
    return strtod(p, NULL);
}

/* "[a,b]", "(a,b)", "[a,inf)": returns 0 if v lies inside. */
static int in_interval(const char *range, double v)
{
    const char *comma = strchr(range, ',');
    size_t len = strlen(range);
    if (comma == NULL || len < 5)
        return 0; /* malformed ranges are a plugin bug caught by the descriptor check */
    char lo_br = range[0], hi_br = range[len - 1];
    double lo = parse_bound(range + 1, (size_t)(comma - range - 1));
    double hi = parse_bound(comma + 1, (size_t)(range + len - 1 - comma - 1));
    if (lo_br == '[' ? v < lo : v <= lo)
        return -1;
    if (hi_br == ']' ? v > hi : v >= hi)
        return -1;
    return 0;
}

static int in_enum(const char *choices, const char *v)
{
    size_t vl = strlen(v);
    const char *p = choices;
    while (*p) {
        const char *bar = strchr(p, '|');
        size_t n = bar ? (size_t)(bar - p) : strlen(p);
        if (n == vl && strncmp(p, v, n) == 0)
            return 0;
        if (bar == NULL)
            break;
        p = bar + 1;
    }
    return -1;
}

int primal_key_check(const primal_key *k, const char *text, char *why, size_t whylen)
{
    int64_t i;
    double f;
    int b;
    switch (k->type) {
    case PRIMAL_KEY_INT:
        if (parse_int(text, &i) != 0) {
            snprintf(why, whylen, "expected an integer, got \"%s\"", text);
            return -1;
        }
        if (k->range && in_interval(k->range, (double)i) != 0) {
            snprintf(why, whylen, "must be in %s, got %s", k->range, text);
            return -1;
        }
        return 0;
    case PRIMAL_KEY_FLOAT:
        if (parse_float(text, &f) != 0) {
            snprintf(why, whylen, "expected a finite number, got \"%s\"", text);
            return -1;
        }
        if (k->range && in_interval(k->range, f) != 0) {
            snprintf(why, whylen, "must be in %s, got %s", k->range, text);
            return -1;
        }
        return 0;
    case PRIMAL_KEY_BOOL:
        if (parse_bool(text, &b) != 0) {
            snprintf(why, whylen, "expected true or false, got \"%s\"", text);
            return -1;
        }
        return 0;
    case PRIMAL_KEY_ENUM:
        if (in_enum(k->range ? k->range : "", text) != 0) {
            snprintf(why, whylen, "expected one of %s, got \"%s\"", k->range ? k->range : "",
                     text);
            return -1;
        }
        return 0;
    case PRIMAL_KEY_STRING:
        return 0;
    }
    snprintf(why, whylen, "key has an unknown type %d", (int)k->type);
    return -1;
}

/* ------------------------------------------------------------------------------------------ */
/* Binding                                                                                    */

void primal_config_free(primal_config *c)
{
    if (c == NULL)
        return;
    for (int i = 0; i < c->nkeys; i++)
        free(c->v[i].text);
    free(c->v);
    free(c->file);
    free(c->section);
    free(c->owner);
    free(c->dir);
    free(c);
}

static void key_list(const primal_key *keys, char *buf, size_t n)
{
    size_t used = 0;
    buf[0] = '\0';
    for (const primal_key *k = keys; k && k->name; k++) {
        int w = snprintf(buf + used, n - used, "%s%s", used ? ", " : "", k->name);
        if (w < 0 || (size_t)w >= n - used)
            break;
        used += (size_t)w;
    }
    if (used == 0)
        snprintf(buf, n, "no keys");
}

static int is_ignored(const char *const *ignore, const char *key)
{
    for (; ignore && *ignore; ignore++)
        if (strcmp(*ignore, key) == 0)
            return 1;
    return 0;
}

static int fill_value(primal_config *c, int idx, const char *text, int line, int set,
                      primal_err *err)
{
    const primal_key *k = &c->keys[idx];
    char why[400], w[600];
    if (primal_key_check(k, text, why, sizeof why) != 0) {
        where(w, sizeof w, c->file, set ? line : c->section_line);
        return primal_errf(err, PRIMAL_ECONFIG, "%s: [%s] %s: %s%s", w, c->section, k->name,
                           why, set ? "" : " (the default; a plugin bug)");
    }
    cfg_val *v = &c->v[idx];
    v->text = xstrdup(text);
    if (v->text == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    v->line = line;
    v->set = set;
    if (k->type == PRIMAL_KEY_INT)
        parse_int(text, &v->i);
    else if (k->type == PRIMAL_KEY_FLOAT)
        parse_float(text, &v->f);
    else if (k->type == PRIMAL_KEY_BOOL)
        parse_bool(text, &v->b);
    return PRIMAL_OK;
}

static primal_config *config_new(const char *file, const char *section, int section_line,
                                 const primal_key *keys, const char *owner)
{
    primal_config *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    for (const primal_key *k = keys; k && k->name; k++)
        c->nkeys++;
    c->keys = keys;
    c->v = calloc((size_t)c->nkeys + 1, sizeof *c->v);
    c->file = xstrdup(file);
    c->section = xstrdup(section);
    c->owner = xstrdup(owner);
    /* relative paths in values resolve against the experiment file's directory */
    const char *slash = strrchr(file, '/');
    if (slash == NULL) {
        c->dir = xstrdup(".");
    } else {
        size_t n = (size_t)(slash - file);
        c->dir = malloc(n + 2);
        if (c->dir != NULL) {
            memcpy(c->dir, file, n ? n : 1);
            c->dir[n ? n : 1] = '\0';
        }
    }
    c->section_line = section_line;
    if (c->v == NULL || c->file == NULL || c->section == NULL || c->owner == NULL ||
        c->dir == NULL) {
        primal_config_free(c);
        return NULL;
    }
    return c;
}

int primal_config_bind(primal_ini *ini, const char *section, const primal_key *keys,
                       const char *owner, const char *const *ignore, primal_config **out,
                       primal_err *err)
{
    *out = NULL;
    ini_section *s = find_section(ini, section);
    primal_config *c = config_new(ini->path, section, s ? s->line : 0, keys, owner);
    if (c == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    char w[600];
    if (s != NULL) {
        s->used = 1;
        for (int j = 0; j < s->n; j++) {
            ini_entry *e = &s->e[j];
            if (is_ignored(ignore, e->key))
                continue;
            int idx = -1;
            for (int i = 0; i < c->nkeys; i++)
                if (strcmp(keys[i].name, e->key) == 0)
                    idx = i;
            if (idx < 0) {
                char list[600];
                key_list(keys, list, sizeof list);
                where(w, sizeof w, ini->path, e->line);
                int rc = primal_errf(err, PRIMAL_ECONFIG,
                                     "%s: [%s] %s: unknown key (%s accepts: %s)", w, section,
                                     e->key, owner, list);
                primal_config_free(c);
                return rc;
            }
            e->used = 1;
            int rc = fill_value(c, idx, e->value, e->line, 1, err);
            if (rc != PRIMAL_OK) {
                primal_config_free(c);
                return rc;
            }
        }
    }
    for (int i = 0; i < c->nkeys; i++) {
        if (c->v[i].text != NULL)
            continue;
        if (keys[i].def == NULL) {
            where(w, sizeof w, ini->path, c->section_line);
            int rc = primal_errf(err, PRIMAL_ECONFIG, "%s: [%s] %s: required by %s, not given",
                                 w, section, keys[i].name, owner);
            primal_config_free(c);
            return rc;
        }
        int rc = fill_value(c, i, keys[i].def, 0, 0, err);
        if (rc != PRIMAL_OK) {
            primal_config_free(c);
            return rc;
        }
    }
    *out = c;
    return PRIMAL_OK;
}

int primal_config_from_kv(const primal_plugin *p, const char *section, const char *const *kv,
                          primal_config **out, primal_err *err)
{
    primal_ini *ini = primal_ini_new("<test>");
    if (ini == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    int rc = PRIMAL_OK;
    char buf[1024];
    for (; kv && *kv && rc == PRIMAL_OK; kv++) {
        snprintf(buf, sizeof buf, "%s.%s", section, *kv);
        rc = primal_ini_set(ini, buf, err);
    }
    if (rc == PRIMAL_OK)
        rc = primal_config_bind(ini, section, p->keys, p->name, NULL, out, err);
    primal_ini_free(ini);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* What plugins call (primal/plugin.h)                                                        */

static const cfg_val *lookup(const primal_config *c, const char *key, primal_key_type *type)
{
    if (c == NULL)
        return NULL;
    for (int i = 0; i < c->nkeys; i++)
        if (strcmp(c->keys[i].name, key) == 0) {
            *type = c->keys[i].type;
            return &c->v[i];
        }
    return NULL;
}

int64_t primal_cfg_int(const primal_config *c, const char *key)
{
    primal_key_type t;
    const cfg_val *v = lookup(c, key, &t);
    return v && t == PRIMAL_KEY_INT ? v->i : 0;
}

double primal_cfg_float(const primal_config *c, const char *key)
{
    primal_key_type t;
    const cfg_val *v = lookup(c, key, &t);
    if (v == NULL)
        return 0.0;
    if (t == PRIMAL_KEY_FLOAT)
        return v->f;
    return t == PRIMAL_KEY_INT ? (double)v->i : 0.0;
}

int primal_cfg_bool(const primal_config *c, const char *key)
{
    primal_key_type t;
    const cfg_val *v = lookup(c, key, &t);
    return v && t == PRIMAL_KEY_BOOL ? v->b : 0;
}

const char *primal_cfg_str(const primal_config *c, const char *key)
{
    primal_key_type t;
    const cfg_val *v = lookup(c, key, &t);
    return v && (t == PRIMAL_KEY_STRING || t == PRIMAL_KEY_ENUM) ? v->text : NULL;
}

int primal_cfg_is_set(const primal_config *c, const char *key)
{
    primal_key_type t;
    const cfg_val *v = lookup(c, key, &t);
    return v ? v->set : 0;
}

int primal_config_set_str(primal_config *c, const char *key, const char *text, primal_err *err)
{
    primal_key_type t;
    cfg_val *v = (cfg_val *)lookup(c, key, &t);
    if (v == NULL || t != PRIMAL_KEY_STRING)
        return primal_errf(err, PRIMAL_ERROR, "[%s] %s: not a string key", c->section, key);
    char *d = xstrdup(text);
    if (d == NULL)
        return primal_errf(err, PRIMAL_ENOMEM, "out of memory");
    free(v->text);
    v->text = d;
    return PRIMAL_OK;
}

const char *primal_cfg_section(const primal_config *c) { return c->section; }
const char *primal_cfg_dir(const primal_config *c) { return c->dir; }
const primal_key *primal_config_keys(const primal_config *c) { return c->keys; }

int primal_cfg_errf(const primal_config *c, const char *key, primal_err *err, int code,
                    const char *fmt, ...)
{
    primal_key_type t;
    const cfg_val *v = lookup(c, key, &t);
    char w[600], msg[PRIMAL_ERR_MAX];
    where(w, sizeof w, c->file, v && v->set ? v->line : c->section_line);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return primal_errf(err, code, "%s: [%s] %s: %s", w, c->section, key, msg);
}

void primal_config_write(const primal_config *c, FILE *f)
{
    for (int i = 0; i < c->nkeys; i++)
        fprintf(f, "%s = %s\n", c->keys[i].name, c->v[i].text);
}
