/* primal-run: train from an experiment file.  See --help. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <primal/primal.h>

#include "dist.h"
#include "experiment.h"
#include "train.h"

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static void usage(FILE *f)
{
    fputs("usage: primal-run EXP.ini [--set SECTION.KEY=VALUE]... [--plugin-path DIR]...\n"
          "                  [--resume | --resume-anyway | --overwrite] [--check]\n"
          "                  [--dump-batches N OUT.safetensors]\n"
          "       primal-run --list-plugins [--plugin-path DIR]...\n"
          "       primal-run --describe NAME|PATH.so|SECTION [--plugin-path DIR]...\n"
          "       primal-run --version | --help\n"
          "\n"
          "Trains the model that EXP.ini describes.  The run directory ([run] out, default\n"
          "runs/<EXP> in the current directory) receives config.ini (the resolved\n"
          "configuration), log.jsonl, checkpoints and sample.txt.  A run into a directory\n"
          "holding another run's checkpoints or log.jsonl is refused: --resume continues that\n"
          "run, --overwrite replaces it.  A relative path in EXP.ini ([run] out, [model] init,\n"
          "[data] path, tokenizer, a plugin's .so) is relative to EXP.ini's directory; one\n"
          "given with --set is relative to the current directory.\n"
          "\n"
          "  --set S.K=V      override key K of section S (repeatable); S may contain dots\n"
          "  --plugin-path D  search D for plugins first (repeatable); then $PRIMAL_PLUGIN_PATH,\n"
          "                   the build tree (uninstalled builds only) and the installed\n"
          "                   plugin directory\n"
          "  --resume         continue from the newest valid checkpoint in the run directory;\n"
          "                   refused where its config.ini differs from the experiment (but\n"
          "                   for [run] out, steps, the intervals, device and speed keys)\n"
          "  --resume-anyway  --resume, even where config.ini differs\n"
          "  --overwrite      delete the run directory's checkpoints, log.jsonl, config.ini\n"
          "                   and sample.txt (once set-up succeeded), then train afresh\n"
          "  --check          check everything a run would refuse at start (every file opened,\n"
          "                   every plugin created, the run directory looked into as the\n"
          "                   run does, with --resume or --overwrite if given; no model\n"
          "                   built, nothing written), then print the resolved configuration\n"
          "  --dump-batches N OUT  write the first N training batches (tokens, mask) and exit\n"
          "  --list-plugins   name, kind, description and file of every plugin found\n"
          "  --describe P     the keys plugin P accepts, with types, defaults and help; P may\n"
          "                   also be a section of the core: run, model, optim, grid, flip,\n"
          "                   scheduler, data\n"
          "\n"
          "Ctrl-C (or SIGTERM) finishes the current step, writes a checkpoint and exits with\n"
          "status 130; --resume continues from there.\n"
          "\n"
          "[run] device = cuda trains on the GPU (a build configured with CUDA).  Under\n"
          "`mpirun -np N primal-run EXP.ini` the N ranks train one model data-parallel\n"
          "([run] reduce = grad|votes; a build configured with MPI; see --version).\n",
          f);
}

static void list_one(void *user, const char *path, const primal_plugin *d, const char *msg)
{
    (void)user;
    if (d != NULL)
        printf("%-22s %-12s %s\n%22s %-12s (%s)\n", d->name, primal_kind_name(d->kind),
               d->description ? d->description : "", "", "", path);
    else
        printf("%-22s %-12s %s\n", "?", "not loaded", msg);
}

static const char *type_name(primal_key_type t)
{
    switch (t) {
    case PRIMAL_KEY_INT: return "int";
    case PRIMAL_KEY_FLOAT: return "float";
    case PRIMAL_KEY_BOOL: return "bool";
    case PRIMAL_KEY_STRING: return "string";
    case PRIMAL_KEY_ENUM: return "enum";
    }
    return "?";
}

static void print_keys(const primal_key *keys)
{
    if (keys == NULL || keys[0].name == NULL)
        printf("  no keys\n");
    for (const primal_key *k = keys; k && k->name; k++) {
        printf("  %-18s %-6s default %-10s %s%s%s\n", k->name, type_name(k->type),
               k->def ? (k->def[0] ? k->def : "\"\"") : "(required)", k->help ? k->help : "",
               k->range ? "  " : "", k->range ? k->range : "");
    }
}

/* The core's sections of the experiment file: their keys, and whose keys follow. */
static int describe_section(const char *name)
{
    static const struct {
        const char *name;
        const primal_key *keys;
        const char *more;
    } sections[] = {
        {"run", primal_run_keys, NULL},
        {"model", primal_model_keys, NULL},
        {"optim", primal_optim_keys, NULL},
        {"grid", primal_grid_core_keys,
         "the grid plugin's keys follow in [grid] (primal-run --describe NAME); a section\n"
         "  [grid.TENSOR] gives the tensors matching the glob TENSOR a grid of their own, with\n"
         "  the same keys (plugin: [grid]'s when absent)"},
        {"flip", primal_flip_core_keys,
         "the flip policy's keys follow in [flip] (primal-run --describe NAME)"},
        {"scheduler", primal_scheduler_keys,
         "each scheduler's keys go in a section named after it, [NAME] (primal-run --describe "
         "NAME)"},
        {"data", primal_data_keys,
         "the data loader's keys follow in [data] (primal-run --describe NAME), among them\n"
         "  path and val_path for the loaders that read corpus files"},
    };
    for (size_t i = 0; i < sizeof sections / sizeof sections[0]; i++) {
        if (strcmp(name, sections[i].name) != 0)
            continue;
        printf("[%s] (a section of the experiment file; keys of the core)\n", name);
        print_keys(sections[i].keys);
        if (sections[i].more != NULL)
            printf("  %s\n", sections[i].more);
        printf("  A relative path in the file is relative to the file's directory; one given "
               "with\n  --set is relative to the current directory.\n");
        return 1;
    }
    return 0;
}

static int describe(const primal_search *s, const char *name)
{
    if (describe_section(name))
        return 0;
    primal_err err;
    primal_loaded *p = NULL;
    static const primal_kind kinds[] = {PRIMAL_KIND_GRID, PRIMAL_KIND_POLICY,
                                        PRIMAL_KIND_SCHEDULER, PRIMAL_KIND_LOADER};
    for (int i = 0; i < 4 && p == NULL; i++) {
        if (primal_plugin_load(s, name, kinds[i], &p, &err) != PRIMAL_OK &&
            err.code != PRIMAL_ECONFIG) {
            fprintf(stderr, "primal-run: %s\n", err.msg);
            return 1;
        }
    }
    if (p == NULL) {
        fprintf(stderr, "primal-run: no plugin named '%s' (nor a section of the core: run, "
                        "model, optim, grid, flip, scheduler, data)\n", name);
        return 1;
    }
    const primal_plugin *d = p->desc;
    printf("%s (%s plugin, ABI %u.%u)\n  %s\n  file: %s\n", d->name, primal_kind_name(d->kind),
           d->abi_version >> 16, d->abi_version & 0xFFFFu, d->description ? d->description : "",
           p->path);
    if (d->kind == PRIMAL_KIND_POLICY) {
        const primal_policy_vt *vt = d->vtable;
        printf("  storage: %s; CUDA version: %s\n",
               vt->storage == PRIMAL_STORAGE_DENSE ? "dense float32" : "indexed",
               vt->cuda ? "yes" : "no");
    }
    print_keys(d->keys);
    primal_plugin_unload(p);
    return 0;
}

static void on_event(void *user, const primal_event *ev)
{
    int tty = *(int *)user;
    switch (ev->kind) {
    case PRIMAL_EV_STEP: {
        int eta = (int)ev->eta_s;
        if (tty)
            fprintf(stderr, "\r\033[K");
        fprintf(stderr,
                "step %lld/%lld  loss %.4f  lr %.2e  %.0f tok/s  flips %lld (%.2e)  "
                "ETA %d:%02d:%02d%s",
                (long long)ev->step, (long long)ev->total_steps, ev->loss, ev->lr,
                ev->tokens_per_s, (long long)ev->flips, ev->flip_frac, eta / 3600,
                eta / 60 % 60, eta % 60, tty ? "" : "\n");
        break;
    }
    case PRIMAL_EV_EVAL:
        if (tty)
            fprintf(stderr, "\r\033[K");
        fprintf(stderr, "step %lld/%lld  val_loss %.4f\n", (long long)ev->step,
                (long long)ev->total_steps, ev->val_loss);
        break;
    case PRIMAL_EV_SAMPLE:
        if (tty)
            fprintf(stderr, "\r\033[K");
        printf("--- sample ---\n%s\n--------------\n", ev->message);
        break;
    case PRIMAL_EV_DONE:
        /* each figure says what it counts: on a GPU the model's counter leaves out the policy's
         * state, the CUDA context and cuBLAS, which only the whole device's figure includes
         * (with whatever else runs on the device) */
        if (tty)
            fprintf(stderr, "\r\033[K");
        if (ev->device_peak_bytes > 0)
            fprintf(stderr,
                    "done at step %lld; model buffers peak %.1f MiB, policy state %.1f MiB; "
                    "whole device (cudaMemGetInfo, all processes) peak %.1f MiB\n",
                    (long long)ev->step, (double)ev->peak_mem_bytes / 1048576.0,
                    (double)ev->policy_state_bytes / 1048576.0,
                    (double)ev->device_peak_bytes / 1048576.0);
        else
            fprintf(stderr,
                    "done at step %lld; process peak resident set %.1f MiB, policy state "
                    "%.1f MiB\n",
                    (long long)ev->step, (double)ev->peak_mem_bytes / 1048576.0,
                    (double)ev->policy_state_bytes / 1048576.0);
        break;
    case PRIMAL_EV_WARN:
        if (tty)
            fprintf(stderr, "\r\033[K");
        fprintf(stderr, "primal-run: warning: %s\n", ev->message);
        break;
    default:
        if (tty)
            fprintf(stderr, "\r\033[K");
        fprintf(stderr, "%s\n", ev->message ? ev->message : "");
        break;
    }
    fflush(stderr);
}

static int run_main(int argc, char **argv, const char **sets, const char **dirs)
{
    const char *exp = NULL, *describe_name = NULL, *dump_out = NULL;
    int check = 0, list = 0, resume = 0, resume_anyway = 0, overwrite = 0, dump_n = 0;
    int nsets = 0, ndirs = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--version") == 0) {
            printf("primal-run %s (plugin ABI %d.%d, MPI %s)\n", PRIMAL_VERSION_STRING,
                   PRIMAL_ABI_MAJOR, PRIMAL_ABI_MINOR, primal_dist_available() ? "yes" : "no");
            return 0;
        } else if (strcmp(a, "--set") == 0 && more) {
            sets[nsets++] = argv[++i];
        } else if (strncmp(a, "--set=", 6) == 0) {
            sets[nsets++] = a + 6;
        } else if (strcmp(a, "--plugin-path") == 0 && more) {
            dirs[ndirs++] = argv[++i];
        } else if (strcmp(a, "--check") == 0) {
            check = 1;
        } else if (strcmp(a, "--resume") == 0) {
            resume = 1;
        } else if (strcmp(a, "--resume-anyway") == 0) {
            resume = resume_anyway = 1;
        } else if (strcmp(a, "--overwrite") == 0) {
            overwrite = 1;
        } else if (strcmp(a, "--list-plugins") == 0) {
            list = 1;
        } else if (strcmp(a, "--describe") == 0 && more) {
            describe_name = argv[++i];
        } else if (strcmp(a, "--dump-batches") == 0 && i + 2 < argc) {
            char *end;
            long n = strtol(argv[i + 1], &end, 10);
            if (*end != '\0' || n < 1 || n > 1000000) {
                fprintf(stderr, "primal-run: --dump-batches: expected a positive count, got "
                                "\"%s\"\n", argv[i + 1]);
                return 2;
            }
            dump_n = (int)n;
            dump_out = argv[i + 2];
            i += 2;
        } else if (a[0] == '-' || exp != NULL) {
            fprintf(stderr, "primal-run: unexpected argument '%s' (see --help)\n", a);
            return 2;
        } else {
            exp = a;
        }
    }
    primal_err err;
    primal_err_clear(&err);
    if (list || describe_name != NULL) {
        primal_search s;
        if (primal_search_init(&s, dirs, &err) != PRIMAL_OK) {
            fprintf(stderr, "primal-run: %s\n", err.msg);
            return 1;
        }
        int rc = 0;
        if (list)
            primal_plugin_list(&s, list_one, NULL);
        else
            rc = describe(&s, describe_name);
        primal_search_free(&s);
        return rc;
    }
    if (exp == NULL) {
        usage(stderr);
        return 2;
    }
    if (resume && overwrite) {
        fprintf(stderr, "primal-run: --resume continues the run directory's run, --overwrite "
                        "deletes it: not both\n");
        return 2;
    }
    primal_experiment *e = NULL;
    int rc = primal_experiment_load(exp, sets, dirs, &e, &err);
    if (rc != PRIMAL_OK) {
        fprintf(stderr, "primal-run: %s\n", err.msg);
        return 1;
    }
    primal_dist *dist = NULL;
    if (!check && dump_out == NULL) {
        rc = primal_dist_init(&argc, &argv, &dist, &err);
        if (rc != PRIMAL_OK) {
            fprintf(stderr, "primal-run: %s\n", err.msg);
            primal_experiment_free(e);
            return 1;
        }
    }
    if (check) {
        /* everything the run would refuse at start, short of building the model, in the run's
         * order: the run directory (another run's files, --resume's config.ini), then set-up */
        primal_train_opts o = {.resume = resume, .resume_anyway = resume_anyway,
                               .overwrite = overwrite};
        if (primal_train_check_dir(e, &o, &err) != PRIMAL_OK ||
            primal_experiment_check(e, &err) != PRIMAL_OK) {
            fprintf(stderr, "primal-run: %s\n", err.msg);
            primal_experiment_free(e);
            return 1;
        }
        char *ini = primal_experiment_resolved(e);
        fputs(ini ? ini : "", stdout);
        free(ini);
        primal_experiment_free(e);
        return 0;
    }
    if (dump_out != NULL) {
        rc = primal_dump_batches(e, dump_n, dump_out, &err);
    } else {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        int tty = isatty(STDERR_FILENO);
        primal_train_opts o = {.resume = resume, .resume_anyway = resume_anyway,
                               .overwrite = overwrite, .stop_flag = &stop_flag,
                               .on_event = on_event, .user = &tty, .dist = dist};
        rc = primal_train(e, &o, &err);
    }
    int rank = primal_dist_rank(dist), nranks = primal_dist_size(dist);
    if (rc != PRIMAL_OK && rc != PRIMAL_EINTR) {
        if (nranks > 1)
            fprintf(stderr, "primal-run: rank %d: %s\n", rank, err.msg);
        else
            fprintf(stderr, "primal-run: %s\n", err.msg);
        fflush(stderr);
    }
    /* a failing rank takes the others down with it, so no rank waits in a collective */
    primal_dist_finish(dist, rc == PRIMAL_OK || rc == PRIMAL_EINTR);
    primal_experiment_free(e);
    if (rc == PRIMAL_EINTR) {
        if (rank == 0)
            fprintf(stderr, "primal-run: %s\n", err.msg);
        return 130;
    }
    return rc == PRIMAL_OK ? 0 : 1;
}

int main(int argc, char **argv)
{
    /* --set and --plugin-path arguments, at most one per argument */
    const char **sets = calloc((size_t)argc + 1, sizeof *sets);
    const char **dirs = calloc((size_t)argc + 1, sizeof *dirs);
    int rc = sets && dirs ? run_main(argc, argv, sets, dirs) : 1;
    free(sets);
    free(dirs);
    return rc;
}
