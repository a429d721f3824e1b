/*
 * An SMMU's resolved stream configurations, keyed by StreamID, and the batch
 * translation of (StreamID, address) pairs through them.  The SMMU model
 * (Python) decodes STEs and CDs and records events; this is only its cache of
 * the result, so that the hot path needs no Python per item.  Open addressing
 * with linear probing and backward-shift deletion; set() may allocate, the
 * batch never does.
 */
#include <errno.h>
#include <stdlib.h>

#include "internal.h"

struct stream {
    uint32_t sid;
    uint8_t used;
    uint8_t mode;
    uint8_t ias;
    struct pymsi_xlate_cfg cfg;
};

struct pymsi_streams {
    struct stream *slots;
    unsigned bits;
    size_t count;
};

#define STREAMS_INITIAL_BITS 4

pymsi_streams *pymsi_streams_new(void)
{
    pymsi_streams *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->bits = STREAMS_INITIAL_BITS;
    s->slots = calloc((size_t)1 << s->bits, sizeof(*s->slots));
    if (!s->slots) {
        free(s);
        return NULL;
    }
    return s;
}

void pymsi_streams_free(pymsi_streams *s)
{
    if (!s)
        return;
    free(s->slots);
    free(s);
}

static size_t probe(const pymsi_streams *s, uint32_t sid)
{
    size_t mask = ((size_t)1 << s->bits) - 1;
    size_t i = (size_t)pymsi_hash(sid, s->bits);
    while (s->slots[i].used && s->slots[i].sid != sid)
        i = (i + 1) & mask;
    return i;
}

static int grow(pymsi_streams *s)
{
    unsigned bits = s->bits + 1;
    size_t cap = (size_t)1 << bits, mask = cap - 1;
    struct stream *slots = calloc(cap, sizeof(*slots));
    if (!slots)
        return -ENOMEM;
    for (size_t j = 0; j < ((size_t)1 << s->bits); j++) {
        if (!s->slots[j].used)
            continue;
        size_t i = (size_t)pymsi_hash(s->slots[j].sid, bits);
        while (slots[i].used)
            i = (i + 1) & mask;
        slots[i] = s->slots[j];
    }
    free(s->slots);
    s->slots = slots;
    s->bits = bits;
    return 0;
}

int pymsi_streams_set(pymsi_streams *s, uint32_t sid, int mode, const struct pymsi_xlate_cfg *cfg,
                      unsigned ias)
{
    if (mode < PYMSI_STREAM_ABORT || mode > PYMSI_STREAM_TRANSLATE || ias > 64)
        return -EINVAL;
    if (mode == PYMSI_STREAM_TRANSLATE && (!cfg || pymsi_cfg_check(cfg)))
        return -EINVAL;
    size_t i = probe(s, sid);
    if (!s->slots[i].used) {
        if ((s->count + 1) * 2 > ((size_t)1 << s->bits)) {
            int rc = grow(s);
            if (rc)
                return rc;
            i = probe(s, sid);
        }
        s->count++;
    }
    struct stream *e = &s->slots[i];
    memset(e, 0, sizeof(*e));
    e->sid = sid;
    e->used = 1;
    e->mode = (uint8_t)mode;
    e->ias = (uint8_t)ias;
    if (mode == PYMSI_STREAM_TRANSLATE)
        e->cfg = *cfg;
    return 0;
}

int pymsi_streams_remove(pymsi_streams *s, uint32_t sid)
{
    size_t mask = ((size_t)1 << s->bits) - 1;
    size_t i = probe(s, sid), j = i;
    if (!s->slots[i].used)
        return -ENOENT;
    for (;;) {
        s->slots[i].used = 0;
        for (;;) {
            j = (j + 1) & mask;
            if (!s->slots[j].used) {
                s->count--;
                return 0;
            }
            size_t home = (size_t)pymsi_hash(s->slots[j].sid, s->bits);
            if (i <= j ? (home <= i || home > j) : (home <= i && home > j))
                break;
        }
        s->slots[i] = s->slots[j];
        i = j;
    }
}

void pymsi_streams_clear(pymsi_streams *s)
{
    memset(s->slots, 0, ((size_t)1 << s->bits) * sizeof(*s->slots));
    s->count = 0;
}

size_t pymsi_streams_count(const pymsi_streams *s)
{
    return s->count;
}

long pymsi_stream_batch(const pymsi_mem *m, pymsi_tlb *tlb, const pymsi_streams *s, int write,
                        const uint32_t *sids, const uint64_t *iovas, size_t n,
                        uint64_t *out_pa, int32_t *status, uint32_t *unresolved)
{
    long ok = 0;
    size_t left = 0;
    struct pymsi_result r;
    for (size_t k = 0; k < n; k++) {
        const struct stream *e = &s->slots[probe(s, sids[k])];
        out_pa[k] = 0;
        if (!e->used) {
            status[k] = -EAGAIN;
            goto unresolved;
        }
        if (e->mode == PYMSI_STREAM_ABORT) {
            status[k] = PYMSI_STATUS_ABORT;
            goto unresolved;
        }
        if (e->mode == PYMSI_STREAM_BYPASS) {
            out_pa[k] = iovas[k];
            status[k] = PYMSI_STATUS_BYPASS;
            ok++;
            continue;
        }
        if (e->ias && e->ias < 64 && (iovas[k] >> e->ias)) {
            memset(&r, 0, sizeof(r));
            r.fault_kind = PYMSI_FAULT_ADDRESS_SIZE;
            r.fault_stage = 1;
        } else {
            pymsi_translate_nocheck(m, tlb, &e->cfg, iovas[k], write, &r);
        }
        status[k] = pymsi_status_of(&r);
        if (!status[k]) {
            out_pa[k] = r.pa;
            ok++;
            continue;
        }
        out_pa[k] = r.fault_stage == 2 ? r.fault_ipa : 0;
unresolved:
        if (unresolved)
            unresolved[left++] = (uint32_t)k;
    }
    return ok;
}

int pymsi_stream_translate(const pymsi_mem *m, pymsi_tlb *tlb, const pymsi_streams *s,
                           uint32_t sid, uint64_t iova, int write, struct pymsi_result *r)
{
    const struct stream *e = &s->slots[probe(s, sid)];
    if (!e->used || e->mode != PYMSI_STREAM_TRANSLATE)
        return 1;
    if (e->ias && e->ias < 64 && (iova >> e->ias))
        return 1;
    pymsi_translate_nocheck(m, tlb, &e->cfg, iova, write, r);
    return 0;
}
