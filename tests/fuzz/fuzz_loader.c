/* fuzz_loader.c: a data loader's saved position (loaders/text.c, loaders/tokens.c) restored from
 * any bytes, as --resume restores it from a checkpoint's state.loader blob.
 *
 * Built twice, -DFUZZ_LOADER='"text"' (fuzz_loader_text) and '"tokens"' (fuzz_loader_tokens).
 * The plugin's .so (the harness build's sanitised one) is loaded once through the core's
 * registry (primal_plugin_load, with a path).  The input's first byte picks one of 256
 * configurations (fuzz_loader.h: split, shuffling, chunk and window sizes, files, seed); the
 * loader is opened with it on files of tests/fixtures/data, and the rest of the input goes to
 * restore().  A refusal must come with a message; a restored loader must save() exactly the
 * bytes it restored, and then serve batches: next() three times, with seq_lens taken from the
 * input's last bytes (the saved one now and then, others mostly), each filling the batch with
 * ids inside the vocabulary or failing with a message (a val split ends with PRIMAL_EOF); then
 * rewind(). */
#include <stdlib.h>
#include <string.h>

#include <primal/tokenizer.h>

#include "fuzz.h"
#include "fuzz_loader.h"
#include "registry.h"

#ifndef FUZZ_LOADER
#error "FUZZ_LOADER: \"text\" or \"tokens\""
#endif

#define MAX_ROWS 4
#define MAX_LEN 96

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static primal_loaded *plugin;
static const primal_loader_vt *vt;
static primal_tokenizer *bytes, *qwen;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_pin_plugins();
    primal_search s;
    primal_err err = {0};
    if (primal_search_init(&s, NULL, &err) != PRIMAL_OK)
        fuzz_fail("%s", err.msg);
    if (primal_plugin_load(&s, FUZZ_PLUGIN_DIR "/" FUZZ_LOADER ".so", PRIMAL_KIND_LOADER,
                           &plugin, &err) != PRIMAL_OK)
        fuzz_fail("%s", err.msg);
    primal_search_free(&s);
    vt = plugin->desc->vtable;
    if (primal_tokenizer_open("bytes", &bytes, &err) != PRIMAL_OK)
        fuzz_fail("%s", err.msg);
    if (strcmp(FUZZ_LOADER, "tokens") == 0 &&
        primal_tokenizer_open(FUZZ_FIXTURES "/qwen-tokenizer/tokenizer.json", &qwen, &err) !=
            PRIMAL_OK)
        fuzz_fail("%s", err.msg);
    return 0;
}

/* After a restore: the state round-trips, and batches come or fail with a message. */
static void serve(void *ctx, primal_tokenizer *t, const uint8_t *state, size_t n)
{
    primal_err err = {0};
    uint8_t *back = malloc(PRIMAL_LOADER_STATE_MAX);
    size_t bn = 0;
    if (back == NULL)
        fuzz_fail("out of memory");
    int rc = vt->save(ctx, back, PRIMAL_LOADER_STATE_MAX, &bn, &err);
    if (rc != PRIMAL_OK)
        fuzz_fail("save after restore: %s", err.msg);
    if (bn != n || memcmp(back, state, n) != 0)
        fuzz_fail("save after restore gives other bytes (%zu, restored %zu)", bn, n);
    free(back);

    static int32_t tokens[MAX_ROWS * (MAX_LEN + 1)];
    static uint8_t mask[MAX_ROWS * MAX_LEN];
    int32_t vocab = primal_tokenizer_vocab(t);
    for (int call = 0; call < 3; call++) {
        int len = 1 + (int)(n > (size_t)call ? state[n - 1 - call] : 7) % MAX_LEN;
        int rows = 1 + call % MAX_ROWS;
        primal_batch b = {rows, len, tokens, mask};
        memset(tokens, 0xAB, sizeof tokens);
        rc = vt->next(ctx, &b, &err);
        fuzz_check_err(rc, &err, "next");
        if (rc != PRIMAL_OK)
            break;
        for (int i = 0; i < rows * (len + 1); i++)
            if (tokens[i] < 0 || tokens[i] >= vocab)
                fuzz_fail("next: id %d at %d, outside [0, %d)", tokens[i], i, vocab);
    }
    if (vt->rewind != NULL) {
        rc = vt->rewind(ctx, &err);
        fuzz_check_err(rc, &err, "rewind");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t c = data[0];
    primal_config *cfg = NULL;
    primal_err err = {0};
    if (fuzz_loader_config(plugin->desc, FUZZ_LOADER, c, &cfg, &err) != PRIMAL_OK)
        fuzz_fail("config: %s", err.msg);
    primal_tokenizer *t = fuzz_loader_wants_qwen(FUZZ_LOADER, c) ? qwen : bytes;
    primal_loader_info info = {t, fuzz_loader_split(FUZZ_LOADER, c), fuzz_loader_seed(c), 0, 1};
    void *ctx = NULL;
    int rc = vt->open(cfg, &info, &ctx, &err);
    if (rc != PRIMAL_OK)
        fuzz_fail("open (configuration byte 0x%02x): %s", c, err.msg);
    const uint8_t *state = data + 1;
    size_t n = size - 1;
    if (n > PRIMAL_LOADER_STATE_MAX)
        n = PRIMAL_LOADER_STATE_MAX;
    rc = vt->restore(ctx, state, n, &err);
    fuzz_check_err(rc, &err, "restore");
    if (rc == PRIMAL_OK)
        serve(ctx, t, state, n);
    vt->close(ctx);
    primal_config_free(cfg);
    return 0;
}
